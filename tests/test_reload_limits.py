"""SIGHUP on a running daemon: submission limits and resolver settings take effect for new
sessions and lookups, sessions in progress finish under their own, restart-only keys stay.

Real process (tests/support/daemon.py), smtplib clients, DNS only from DnsServer on loopback.
"""

from __future__ import annotations

import asyncio
import smtplib
from pathlib import Path
from typing import Any

from mtaserver.config import parse_config
from mtaserver.config.restart import keep_restart_keys
from tests.support.daemon import Daemon, TestConfig, free_port, to_toml
from tests.support.dnsserver import DnsServer
from tests.support.mxsink import SinkGroup, wait_for


def _message(size: int, subject: str = "reload") -> bytes:
    head = f"From: App <app@example.com>\r\nTo: u@dest.test\r\nSubject: {subject}\r\n\r\n"
    line = b"x" * 70 + b"\r\n"
    return head.encode() + line * (size // len(line) + 1)


def _send(client: smtplib.SMTP, data: bytes, rcpts: int = 1) -> tuple[int, list[int]]:
    """MAIL (without SIZE, so the limit is met while DATA streams), RCPTs, DATA:
    (DATA reply code, RCPT reply codes)."""
    code, _ = client.mail("app@example.com")
    assert code == 250
    rcpt_codes = [client.rcpt(f"u{i}@dest.test")[0] for i in range(rcpts)]
    data_code, _ = client.data(data)
    return data_code, rcpt_codes


def _client(cfg: TestConfig) -> smtplib.SMTP:
    host, port = cfg.address("submission", "listen_plain")
    client = smtplib.SMTP(host, port, timeout=30)
    client.ehlo("client.test")
    return client


def test_sighup_applies_submission_limits_to_new_sessions_only(tmp_path: Path) -> None:
    cfg = TestConfig(tmp_path, tls=False)
    cfg.set("submission", max_message_size="8KiB", max_recipients=5)
    big = _message(4000)
    with Daemon(cfg) as d:
        before = _client(cfg)  # opened under the old limits, used after the reload
        assert before.esmtp_features["size"] == "8192"

        cfg.set("submission", max_message_size="2KiB", max_recipients=2)
        cfg.write()
        d.reload()
        assert "event=submission_reloaded max_message_size=2048 max_recipients=2" in d.log()

        with _client(cfg) as after:
            assert after.esmtp_features["size"] == "2048"
            assert _send(after, big, rcpts=3) == (552, [250, 250, 452])
            assert _send(after, _message(1000)) == (250, [250])
        # The session from before the reload finishes under the limits it started with.
        assert _send(before, big, rcpts=3) == (250, [250, 250, 250])
        before.quit()

        # A bad file on SIGHUP is logged and the running limits stay.
        cfg.set("submission", max_message_size="lots")
        cfg.write()
        d.reload()
        assert "event=reload_rejected" in d.log()
        with _client(cfg) as again:
            assert _send(again, big) == (552, [250])


def test_sighup_keeps_listen_address_and_says_a_restart_is_needed(tmp_path: Path) -> None:
    cfg = TestConfig(tmp_path, tls=False)
    old = cfg.address("submission", "listen_plain")
    with Daemon(cfg) as d:
        cfg.set("submission", listen_plain=f"127.0.0.1:{free_port()}", max_recipients=3)
        cfg.write()
        d.reload()
        log = d.log()
        assert log.count("event=reload_needs_restart key=submission.listen_plain") == 1
        assert "key=submission.max_recipients" not in log  # a reloadable key is just taken
        assert "event=submission_reloaded" in log and "max_recipients=3" in log
        with smtplib.SMTP(*old, timeout=30) as client:  # still served on the old address
            client.ehlo("client.test")
            assert _send(client, _message(100)) == (250, [250])


def test_restart_only_keys_keep_their_running_value(tmp_path: Path) -> None:
    base: dict[str, dict[str, Any]] = {
        "server": {"hostname": "a.test", "data_dir": str(tmp_path / "d")},
        "submission": {"listen_plain": "127.0.0.1:2525", "trusted_networks": ["127.0.0.0/8"],
                       "max_message_size": "1MiB"},
    }  # fmt: skip
    path = tmp_path / "m.toml"
    old = parse_config(to_toml(base), path)
    base["server"]["hostname"] = "b.test"
    base["submission"].update(listen_plain="127.0.0.1:2526", max_message_size="2MiB")
    new = parse_config(to_toml(base), path)
    effective, changed = keep_restart_keys(old, new)
    assert changed == ("server.hostname", "submission.listen_plain")
    assert effective.server.hostname == "a.test"
    assert effective.submission.listen_plain == ("127.0.0.1", 2525)
    assert effective.submission.max_message_size == 2 * 1024 * 1024  # reloadable: new value
    assert keep_restart_keys(old, old) == (old, ())


async def test_sighup_switches_the_name_servers_for_the_next_mx_lookup(tmp_path: Path) -> None:
    with DnsServer() as first, DnsServer() as second:
        # The same domain, routed to a different MX address by each server.
        for dns, ip in ((first, "127.0.0.2"), (second, "127.0.0.3")):
            dns.add("dest.test", "MX", "10 mx.dest.test.")
            dns.add("mx.dest.test", "A", ip)
        async with SinkGroup(["127.0.0.2", "127.0.0.3"]) as sinks:
            cfg = TestConfig(tmp_path, tls=False)
            cfg.set("delivery", nameservers=[first.nameserver], port=sinks.port, tls="none",
                    ipv6=False)  # fmt: skip
            cfg.set("shaping", poll_interval="20ms")
            client_addr = cfg.address("submission", "listen_plain")

            def submit(subject: str) -> None:
                with smtplib.SMTP(*client_addr, timeout=30) as client:
                    client.sendmail("app@example.com", ["u@dest.test"], _message(100, subject))

            daemon = Daemon(cfg)
            await asyncio.to_thread(daemon.start)
            try:
                await asyncio.to_thread(submit, "one")
                await wait_for(lambda: len(sinks["127.0.0.2"].messages) == 1, 30)
                assert ("dest.test.", "MX") in first.queries

                cfg.set("delivery", nameservers=[second.nameserver])
                cfg.write()
                await asyncio.to_thread(daemon.reload)
                assert f"event=delivery_reloaded nameservers={second.nameserver}" in daemon.log()
                await asyncio.to_thread(submit, "two")
                await wait_for(lambda: len(sinks["127.0.0.3"].messages) == 1, 30)
            finally:
                await asyncio.to_thread(daemon.stop)
            assert ("dest.test.", "MX") in second.queries
            assert len(sinks["127.0.0.2"].messages) == 1
            assert b"Subject: two" in sinks["127.0.0.3"].messages[0].data
