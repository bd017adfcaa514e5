"""RFC 4865 FUTURERELEASE on submission: HOLDFOR/HOLDUNTIL keep a message queued until then.

The daemon runs for real: clients authenticate over STARTTLS (aiosmtplib, and smtplib the
way the README shows it), delivery relays to an aiosmtpd sink, and a held message reaches
the sink only once its time has come. Inbound (port 25) neither offers nor accepts it.
"""

from __future__ import annotations

import asyncio
import re
import smtplib
import sqlite3
import ssl
import time
from pathlib import Path

import aiosmtplib
import pytest

from mtaserver.errors import ConfigError
from mtaserver.submission.futurerelease import (
    Hold,
    HoldError,
    parse_date_time,
    parse_hold,
    split_hold_params,
)
from tests.support.daemon import Daemon, TestConfig, free_port
from tests.support.mxsink import SinkGroup, wait_for
from tests.support.submission import PASSWORD, RawClient, config, plain_auth, running

USER_PASSWORD = "future release pw 1"
MSG = b"From: App <app@example.com>\r\nTo: x@dest.test\r\nSubject: later\r\n\r\nhello\r\n"


def _next_attempt(where: TestConfig | Path, queue_id: str) -> float:
    """From a daemon's database (either backend) or an in-process server's SQLite file."""
    sql = (
        "SELECT r.next_attempt - m.received_at FROM recipients r JOIN messages m "
        "ON m.id = r.queue_id WHERE r.queue_id=?"
    )
    if isinstance(where, TestConfig):
        [(delay,)] = where.query(sql, queue_id)
        return float(delay)
    conn = sqlite3.connect(where)
    try:
        return float(conn.execute(sql, (queue_id,)).fetchone()[0])
    finally:
        conn.close()


def _stamp(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


async def test_daemon_holds_until_release_time_and_refuses_bad_holds(tmp_path: Path) -> None:
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        cfg = TestConfig(tmp_path)
        cfg.set("submission", trusted_networks=["10.99.0.0/16"], max_future_release="1h")
        cfg.set("delivery", relay_host=f"127.0.0.2:{sinks.port}", tls="none")
        cfg.set("shaping", poll_interval="20ms")
        inbound_port = free_port()
        cfg.set("inbound", listen=f"127.0.0.1:{inbound_port}", bounce_domain="bounces.test")
        ctx = ssl.create_default_context()
        cfg.ca.configure_trust(ctx)
        daemon = Daemon(cfg)
        await asyncio.to_thread(daemon.start)
        try:
            added = await asyncio.to_thread(
                daemon.cli, "user", "add", "app", "--domain", "example.com",
                "--password-stdin", input=USER_PASSWORD.encode() + b"\n",
            )  # fmt: skip
            assert added.returncode == 0, added.stderr
            _, port = cfg.address("submission", "listen")
            client = aiosmtplib.SMTP(hostname="localhost", port=port, tls_context=ctx,
                                     start_tls=True, timeout=15)  # fmt: skip
            async with client:
                await client.login("app", USER_PASSWORD)
                # advertised: the configured interval and the latest date-time it reaches
                advert = client.esmtp_extensions["futurerelease"]
                interval, latest = advert.split()
                assert interval == "3600"
                assert abs(parse_date_time(latest) - (time.time() + 3600)) < 5  # type: ignore[operator]

                async def send(*options: str) -> tuple[float, str]:
                    sent = time.monotonic()
                    errors, reply = await client.sendmail(
                        "app@example.com", ["x@dest.test"], MSG, mail_options=list(options)
                    )
                    assert errors == {}
                    return sent, reply.rsplit(" ", 1)[1]

                # HOLDFOR=2: queued at once, not delivered before two seconds have passed
                held_at, held_id = await send("HOLDFOR=2")
                await wait_for(lambda: len(sink.messages) == 1, 20)
                assert sink.messages[0].at - held_at >= 1.9  # not one moment earlier
                assert b"Subject: later" in sink.messages[0].data

                # HOLDUNTIL in the past: released now
                now_at, _ = await send(f"HOLDUNTIL={_stamp(time.time() - 86400)}")
                await wait_for(lambda: len(sink.messages) == 2, 20)
                assert sink.messages[1].at - now_at < 1.9

                # the largest hold allowed, and a HOLDUNTIL with a zone offset: both queued
                # with their release time, which `queue list` and `queue show` display
                _, hour_id = await send("HOLDFOR=3600")
                until = time.time() + 1800
                offset = time.strftime("%Y-%m-%dT%H:%M:%S+02:00", time.gmtime(until + 7200))
                _, until_id = await send(f"holduntil={offset}")
                assert abs(_next_attempt(cfg, hour_id) - 3600) < 0.01
                assert abs(_next_attempt(cfg, until_id) - 1800) < 5

                # refusals, each leaving the session usable
                refusals = {
                    ("HOLDFOR=10", f"HOLDUNTIL={_stamp(time.time() + 60)}"): "501 5.5.4",
                    ("HOLDFOR=10", "HOLDFOR=20"): "501 5.5.4",
                    ("HOLDFOR=soon",): "501 5.5.4",
                    ("HOLDFOR=-5",): "501 5.5.4",
                    ("HOLDFOR=1234567890",): "501 5.5.4",
                    ("HOLDFOR",): "501 5.5.4",
                    ("HOLDUNTIL=2030-02-30T10:00:00Z",): "501 5.5.4",
                    ("HOLDUNTIL=tomorrow",): "501 5.5.4",
                    ("HOLDFOR=3601",): "554 5.3.4",
                    (f"HOLDUNTIL={_stamp(time.time() + 7200)}",): "554 5.3.4",
                }
                for options, expected in refusals.items():
                    with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
                        await client.sendmail(
                            "app@example.com", ["x@dest.test"], MSG, mail_options=list(options)
                        )
                    got = f"{info.value.code} {info.value.message}"
                    assert got.startswith(expected), (options, got)
                    await client.rset()
                # a DSN parameter is still unknown here, hold or not: nothing half-accepted
                with pytest.raises(aiosmtplib.SMTPSenderRefused) as info:
                    await client.sendmail("app@example.com", ["x@dest.test"], MSG,
                                          mail_options=["HOLDFOR=5", "RET=HDRS"])  # fmt: skip
                assert info.value.code == 555
                await client.rset()

            listing = await asyncio.to_thread(daemon.cli, "queue", "list")
            assert listing.returncode == 0, listing.stderr
            lines = {ln.split()[0]: ln for ln in listing.stdout.splitlines() if ln.strip()}
            assert "next=" in lines[hour_id] and "next=" in lines[until_id]
            assert held_id not in lines  # delivered
            shown = await asyncio.to_thread(daemon.cli, "queue", "show", hour_id)
            assert shown.returncode == 0, shown.stderr
            assert re.search(r"\(in (59\.\dm|60\.0m|1\.0h)\)", shown.stdout), shown.stdout

            # inbound (port 25) offers no FUTURERELEASE and refuses the parameter
            inbound = await RawClient.connect(inbound_port)
            await inbound.reply()
            assert "FUTURERELEASE" not in await inbound.cmd("EHLO remote.example")
            refused = await inbound.cmd("MAIL FROM:<x@remote.example> HOLDFOR=60")
            assert refused.startswith("555 "), refused
            await inbound.close()
        finally:
            code = await asyncio.to_thread(daemon.stop)
        assert code == 0, daemon.log()
        assert f"queue_id={hour_id} event=future_release" in daemon.log()
        assert len(sink.messages) == 2  # the two hours-away messages never left


def test_smtplib_mail_options_as_documented(tmp_path: Path) -> None:
    """The README's example, verbatim in spirit: smtplib with mail_options=['HOLDFOR=3600']."""
    cfg = TestConfig(tmp_path)
    cfg.set("submission", trusted_networks=["10.99.0.0/16"])  # default max: 72h
    ctx = ssl.create_default_context()
    cfg.ca.configure_trust(ctx)
    with Daemon(cfg) as d:
        added = d.cli("user", "add", "app", "--domain", "example.com", "--password-stdin",
                      input=USER_PASSWORD.encode() + b"\n")  # fmt: skip
        assert added.returncode == 0, added.stderr
        _, port = cfg.address("submission", "listen")
        with smtplib.SMTP("127.0.0.1", port, timeout=15) as s:
            s.starttls(context=ctx)
            s.login("app", USER_PASSWORD)
            assert s.has_extn("futurerelease")
            assert s.esmtp_features["futurerelease"].split()[0] == str(72 * 3600)
            s.sendmail("app@example.com", ["x@dest.test"], MSG, mail_options=["HOLDFOR=3600"])
            with pytest.raises(smtplib.SMTPSenderRefused) as info:
                s.sendmail("app@example.com", ["x@dest.test"], MSG,
                           mail_options=[f"HOLDFOR={72 * 3600 + 1}"])  # fmt: skip
            assert info.value.smtp_code == 554
        [(qid,)] = cfg.query("SELECT id FROM messages")
        assert abs(_next_attempt(cfg, qid) - 3600) < 0.01


async def test_off_when_zero_and_only_after_ehlo(tmp_path: Path) -> None:
    """``max_future_release = "0s"`` turns it off: not advertised, the parameter is 555."""
    async with running(tmp_path / "off", max_future_release="0s") as env:
        c = await RawClient.connect(env.port("submissions"), env.client_context())
        await c.reply()
        assert "FUTURERELEASE" not in await c.cmd("EHLO client.test")
        assert (await c.cmd(f"AUTH PLAIN {plain_auth()}")).startswith("235")
        assert (await c.cmd("MAIL FROM:<alice@example.com> HOLDFOR=60")).startswith("555 ")
        await c.close()
    async with running(tmp_path / "on") as env:
        c = await RawClient.connect(env.port("submissions"), env.client_context())
        await c.reply()
        assert "250-FUTURERELEASE 259200 " in await c.cmd("EHLO client.test")
        assert (await c.cmd(f"AUTH PLAIN {plain_auth()}")).startswith("235")
        # a quoted local part that looks like a parameter is part of the address
        ok = await c.cmd('MAIL FROM:<"a HOLDFOR=9"@example.com> HOLDFOR=60')
        assert ok.startswith("250 "), ok
        assert (await c.cmd("RCPT TO:<x@dest.example>")).startswith("250 ")
        assert (await c.cmd("DATA")).startswith("354")
        assert (await c.cmd(MSG.decode() + ".")).startswith("250 2.0.0")
        (row,) = env.messages()
        assert abs(_next_attempt(env.db_path, row["id"]) - 60) < 0.01
        # HELO (no extensions negotiated): parameters are a syntax error
        assert (await c.cmd("HELO client.test")).startswith("250")
        assert (await c.cmd("MAIL FROM:<alice@example.com> HOLDFOR=60")).startswith("501 ")
        await c.close()
    assert PASSWORD  # the in-process user's password comes from tests.support


def test_config_key_is_named_in_errors() -> None:
    assert config().max_future_release == 72 * 3600
    assert config(max_future_release="5d").max_future_release == 5 * 86400
    with pytest.raises(ConfigError, match=r"submission\.max_future_release"):
        config(max_future_release="40y")
    with pytest.raises(ConfigError, match=r"submission\.max_future_release.*999999999"):
        config(max_future_release="20000w")


def test_parameter_parsing() -> None:
    assert split_hold_params("FROM:<a@b.example> SIZE=10 HoldFor=5") == (
        "FROM:<a@b.example> SIZE=10",
        (("HOLDFOR", "5"),),
    )
    assert split_hold_params("FROM:<a@b.example> SIZE=10") == ("FROM:<a@b.example> SIZE=10", ())
    assert split_hold_params("FROM:<unterminated HOLDFOR=5")[1] == ()
    assert split_hold_params("FROM: a@b.example HOLDUNTIL") == (
        "FROM: a@b.example",
        (("HOLDUNTIL", None),),
    )
    assert parse_date_time("2030-01-31T08:00:00Z") == 1896076800
    assert parse_date_time("2030-01-31t10:00:00.5+02:00") == 1896076800.5
    assert parse_date_time("2016-12-31T23:59:60Z") == parse_date_time("2017-01-01T00:00:00Z")
    for bad in ("2030-01-31 08:00:00Z", "2030-01-31T08:00:00", "2030-02-29T00:00:00Z",
                "2030-01-31T24:00:00Z", "2030-01-31T08:00:00+24:00", "0000-01-01T00:00:00Z"):  # fmt: skip
        assert parse_date_time(bad) is None, bad
    now = 1_800_000_000.0
    assert parse_hold((("HOLDFOR", "0"),), max_interval=60, now=now) == Hold(seconds=0)
    assert Hold(seconds=0).release_at(now) is None
    assert Hold(seconds=60).release_at(now) == now + 60
    assert Hold(until=now - 1).release_at(now) is None
    with pytest.raises(HoldError, match=r"^554 5\.3\.4"):
        parse_hold((("HOLDFOR", "61"),), max_interval=60, now=now)
