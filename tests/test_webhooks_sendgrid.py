"""Webhooks in SendGrid's format: the Event Webhook array, signed as SendGrid signs it.

Every POST is checked by a real aiohttp receiver on loopback with SendGrid's own published
helper (``sendgrid.helpers.eventwebhook.EventWebhook``) holding the public key that
``mtaserver webhooks keygen`` printed. The end-to-end test sends through the HTTP send API
with SendGrid's Python SDK, delivers to a sink MX (one recipient refused with 550), opens
and clicks through the tracking endpoint, and reads the events a SendGrid receiver would.
"""

from __future__ import annotations

import asyncio
import email
import json
import re
import smtplib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from sendgrid import SendGridAPIClient
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.mail import (
    Category,
    ClickTracking,
    CustomArg,
    Mail,
    OpenTracking,
    Personalization,
    To,
    TrackingSettings,
)

from mtaserver.clock import SystemClock
from mtaserver.config import ConfigError, parse_config
from mtaserver.config.webhooks import WebhookConfig
from mtaserver.model import Event, PreparedMessage, PreparedRecipient
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import EventLog
from mtaserver.storage.sqlite.queue import Spool
from mtaserver.webhooks import WebhookDispatcher
from mtaserver.webhooks import sendgrid as sg
from tests.support.apiserver import ApiDaemon
from tests.support.daemon import free_port
from tests.support.mxsink import wait_for
from tests.test_webhooks import Running, until

SIG = "X-Twilio-Email-Event-Webhook-Signature"
TS = "X-Twilio-Email-Event-Webhook-Timestamp"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"


def keygen(path: Path) -> str:
    """``mtaserver webhooks keygen PATH``, as an operator runs it: the public key it prints."""
    out = subprocess.run(
        [sys.executable, "-m", "mtaserver", "webhooks", "keygen", str(path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert path.stat().st_mode & 0o077 == 0  # the private key is the owner's alone
    return out.stdout.strip()


class SendGridReceiver:
    """What a SendGrid Event Webhook consumer does: verify with SendGrid's helper, then
    take the array. Unverified POSTs get 401 (and are retried by the sender)."""

    def __init__(self, public_key: str) -> None:
        self.verifier = EventWebhook(public_key)
        self.posts: list[tuple[dict[str, str], bytes]] = []  # every verified POST, raw
        self.events: list[dict[str, Any]] = []
        self.bad = 0
        self.decide: Callable[[list[dict[str, Any]]], int] = lambda batch: 200
        self.port = 0
        self._runner: web.AppRunner | None = None

    def verified(self, headers: dict[str, str], body: bytes) -> bool:
        return bool(
            self.verifier.verify_signature(
                body.decode("utf-8"), headers.get(SIG, ""), headers.get(TS, "")
            )
        )

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        headers = {k: v for k, v in request.headers.items()}
        if SIG not in headers or TS not in headers or not self.verified(headers, body):
            self.bad += 1
            return web.Response(status=401)
        batch = json.loads(body)
        assert isinstance(batch, list) and request.content_type == "application/json"
        status = self.decide(batch)
        if 200 <= status < 300:
            self.posts.append((headers, body))
            self.events.extend(batch)
        return web.Response(status=status)

    async def start(self) -> SendGridReceiver:
        app = web.Application()
        app.router.add_post("/sendgrid", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        assert site._server is not None
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/sendgrid"

    def of(self, event: str, email_: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.events
                if e["event"] == event and (email_ is None or e["email"] == email_)]  # fmt: skip


@pytest.fixture
def key_file(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "sendgrid-webhook.pem"
    return path, keygen(path)


@pytest.fixture
async def rx(key_file: tuple[Path, str]) -> AsyncIterator[SendGridReceiver]:
    r = await SendGridReceiver(key_file[1]).start()
    yield r
    await r.stop()


def sg_hook(url: str, key: Path, **kw: Any) -> WebhookConfig:
    base = WebhookConfig(
        name="sg", url=url, events=tuple(dict.fromkeys(
            ["accepted", "deferred", "delivered", "bounced", "suppressed", "open", "click",
             "unsubscribe", "complaint"])),
        secret=b"", timeout=2.0, max_retry_time=60.0, retry_interval=0.05,
        max_retry_interval=0.2, concurrency=4, format="sendgrid", signing_key=key,
        batch_size=100, where="config.toml: webhooks[0]",
    )  # fmt: skip
    return replace(base, **kw)


def message(qid: str, rcpts: list[str], **kw: Any) -> PreparedMessage:
    return PreparedMessage(
        queue_id=qid, sender="app@example.com",
        recipients=tuple(PreparedRecipient(r) for r in rcpts), data=b"Subject: x\r\n\r\nx\r\n",
        user="app", client_ip="127.0.0.1", received_at=1_700_000_000.25,
        message_id="m1@example.com", **kw,
    )  # fmt: skip


def api_event(qid: str, **over: Any) -> Event:
    data = {"x_message_id": "XMSGID", "personalization": 0, "key_id": "k",
            "categories": json.dumps(["welcome", "q4"]),
            "custom_args": json.dumps({"user_id": "42", "event": "must-not-win"}),
            "asm_group_id": None, "batch_id": None, "message_id": "m1@example.com"} | over  # fmt: skip
    return Event("api_message", 1_700_000_000.25, qid, None, tuple(data.items()))


# -- config ----------------------------------------------------------------------------------
def _cfg(body: str, tmp_path: Path) -> Any:
    return parse_config(f"[[webhooks]]\nurl = 'http://127.0.0.1:9/h'\n{body}", tmp_path /
                        "config.toml")  # fmt: skip


def _error(body: str, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as exc:
        _cfg(body, tmp_path)
    return str(exc.value)


def test_config_format_and_errors_naming_the_key(tmp_path: Path) -> None:
    native = _cfg("secret = '0123456789abcdef'\n", tmp_path).webhooks[0]
    assert native.format == "native" and native.batch_size == 1 and native.signing_key is None
    keygen(tmp_path / "k.pem")
    hook = _cfg("format = 'sendgrid'\nsigning_key = 'k.pem'\nevents = ['bounce', 'dropped']\n",
                tmp_path).webhooks[0]  # fmt: skip
    assert hook.signing_key == tmp_path / "k.pem" and hook.batch_size == 100
    assert hook.sendgrid_events == ("bounce", "dropped")
    assert hook.events == ("bounced", "suppressed")  # only these reach its outbox
    everything = _cfg("format = 'sendgrid'\nsigning_key = 'k.pem'\n", tmp_path).webhooks[0]
    assert "accepted" in everything.events and "api_message" not in everything.events
    assert _error("format = 'sendgrid'\nsigning_key = 'nope.pem'\n", tmp_path) == (
        f"config.toml: webhooks[0].signing_key: file not found: {tmp_path / 'nope.pem'}"
    )
    assert _error("format = 'sendgrid'\n", tmp_path).startswith(
        'config.toml: webhooks[0].signing_key: format = "sendgrid" needs signing_key'
    )
    assert _error("format = 'sendgrid'\nsigning_key = 'k.pem'\nsecret = '0123456789abcdef'\n",
                  tmp_path).startswith("config.toml: webhooks[0].secret: not used")  # fmt: skip
    assert _error("format = 'sendgrid'\nsigning_key = 'k.pem'\nevents = ['bounced']\n",
                  tmp_path).startswith("config.toml: webhooks[0].events: expected SendGrid")  # fmt: skip
    assert _error("format = 'soap'\n", tmp_path).startswith("config.toml: webhooks[0].format:")
    assert _error("secret = '0123456789abcdef'\nsigning_key = 'k.pem'\n", tmp_path).startswith(
        "config.toml: webhooks[0].signing_key: only used with format"
    )
    assert _error("secret = '0123456789abcdef'\nbatch_size = 5\n", tmp_path).startswith(
        "config.toml: webhooks[0].batch_size:"
    )


async def test_a_bad_key_file_stops_the_service_naming_the_entry(
    db: Database, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError) as exc:
        WebhookDispatcher(db, [sg_hook("http://127.0.0.1:9/", bad)], SystemClock())
    assert str(exc.value).startswith(
        f"config.toml: webhooks[0].signing_key: {bad} is not an unencrypted PEM private key"
    )
    rsa = tmp_path / "rsa.pem"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-out", str(rsa)], check=True,
                   capture_output=True)  # fmt: skip
    with pytest.raises(ConfigError, match="not an ECDSA P-256 key"):
        WebhookDispatcher(db, [sg_hook("http://127.0.0.1:9/", rsa)], SystemClock())


def test_check_config_finds_a_bad_key_before_the_daemon_does(tmp_path: Path) -> None:
    (tmp_path / "bad.pem").write_text("not a key\n")
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        f"[server]\nhostname = 'mta.test'\ndata_dir = '{tmp_path}/data'\n"
        "[[webhooks]]\nurl = 'http://127.0.0.1:9/h'\nformat = 'sendgrid'\nsigning_key = 'bad.pem'\n"
    )
    run = [sys.executable, "-m", "mtaserver", "check-config", "-c", str(cfg)]
    out = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 2 and "config ok" not in out.stdout
    assert f"config.toml: webhooks[0].signing_key: {tmp_path / 'bad.pem'} is not" in out.stderr
    keygen(tmp_path / "bad.pem.new")
    (tmp_path / "bad.pem.new").replace(tmp_path / "bad.pem")
    out = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and out.stdout.startswith("config ok"), out.stderr


# -- signing -----------------------------------------------------------------------------------
def test_signature_verifies_with_sendgrids_helper_and_a_tampered_payload_fails(
    key_file: tuple[Path, str],
) -> None:
    path, public = key_file
    key = sg.load_key(path)
    assert sg.public_key_b64(key) == public
    body = b'[{"email":"a@dest.test","event":"delivered","timestamp":1700000000}]'
    sig = sg.sign(key, 1700000000, body)
    helper = EventWebhook()
    pub = helper.convert_public_key_to_ecdsa(public)  # SendGrid's documented two steps
    assert helper.verify_signature(body.decode(), sig, "1700000000", pub)
    assert not helper.verify_signature(body.decode().replace("delivered", "bounce"), sig,
                                       "1700000000", pub)  # fmt: skip
    assert not helper.verify_signature(body.decode(), sig, "1700000001", pub)
    other = sg.public_key_b64(sg.generate_key())
    assert not helper.verify_signature(body.decode(), sig, "1700000000",
                                       helper.convert_public_key_to_ecdsa(other))  # fmt: skip


# -- dispatcher, in process ------------------------------------------------------------------
async def test_events_are_posted_as_one_signed_sendgrid_array(
    db: Database, rx: SendGridReceiver, key_file: tuple[Path, str]
) -> None:
    """Every kind we map, in SendGrid's shape; several messages' events in one POST."""
    spool, log = Spool(db), EventLog(db)
    now = 1_700_000_100.0
    async with Running(db, [sg_hook(rx.url, key_file[0])]):
        await spool.enqueue(message("Q1", ["a@dest.test", "b@dest.test"]), [api_event("Q1")])
        await until(lambda: len(rx.of("processed")) == 2)
        group = api_event("Q2", asm_group_id=77, categories="[]", custom_args="{}")
        await spool.enqueue(message("Q2", ["c@dest.test"], campaign="spring"), [group])
        await until(lambda: len(rx.of("processed")) == 3)
        await log.emit(
            Event("delivered", now, "Q1", "a@dest.test",
                  (("reply", "250 2.0.0 ok"), ("tls", "TLSv1.3"), ("attempts", 1))),
            Event("deferred", now, "Q1", "b@dest.test",
                  (("reply", "451 4.7.1 greylisted"), ("attempts", 1))),
            Event("unsubscribe", now, "Q2", "c@dest.test",
                  (("idx", 0), ("user_agent", BROWSER), ("client_ip", "192.0.2.0"))),
            Event("dsn_sent", now, "Q1", "app@example.com"),  # no SendGrid equivalent
        )  # fmt: skip
        await until(lambda: len(rx.events) == 6)
        await log.emit(
            Event("bounced", now + 1, "Q1", "b@dest.test",
                  (("source", "sync"), ("kind", "soft"), ("category", "spam-blocked"),
                   ("status", "5.7.1"), ("reply", "550 5.7.1 spam"))),
            Event("click", now + 2, "Q1", "a@dest.test",
                  (("idx", 0), ("url", "https://example.com/x?y=1"), ("user_agent", BROWSER),
                   ("client_ip", "192.0.2.0"))),
            Event("complaint", now + 3, "Q2", "c@dest.test", (("idx", 0),)),
        )  # fmt: skip
        await until(lambda: len(rx.events) == 9)
    assert rx.bad == 0
    processed = {e["email"]: e for e in rx.of("processed")}
    a = processed["a@dest.test"]
    assert a == {
        "email": "a@dest.test", "timestamp": 1_700_000_000, "event": "processed",
        "sg_event_id": a["sg_event_id"], "sg_message_id": "XMSGID.Q1.0",
        "smtp-id": "<m1@example.com>", "category": ["welcome", "q4"], "user_id": "42",
    }  # fmt: skip
    assert processed["b@dest.test"]["sg_message_id"] == "XMSGID.Q1.1"
    assert len({e["sg_event_id"] for e in rx.events}) == len(rx.events) == 9
    assert json.loads(rx.posts[0][1])[0]["event"] == "processed"
    c = processed["c@dest.test"]
    assert c["category"] == ["spring"] and c["asm_group_id"] == 77  # SMTP-style campaign
    [delivered] = rx.of("delivered")
    assert delivered["sg_message_id"] == "XMSGID.Q1.0" and delivered["tls"] == 1
    assert delivered["response"] == "250 2.0.0 ok" and delivered["timestamp"] == int(now)
    [deferred] = rx.of("deferred")
    assert deferred["attempt"] == "1" and deferred["response"] == "451 4.7.1 greylisted"
    [unsub] = rx.of("group_unsubscribe")  # the message had an asm group
    assert unsub["asm_group_id"] == 77 and unsub["useragent"] == BROWSER
    assert unsub["ip"] == "192.0.2.0"
    [bounce] = rx.of("bounce")
    assert (bounce["type"], bounce["status"], bounce["reason"]) == (
        "blocked",
        "5.7.1",
        "550 5.7.1 spam",
    )
    assert bounce["bounce_classification"] == "Content"
    [click] = rx.of("click")
    assert click["url"] == "https://example.com/x?y=1" and click["sg_message_id"] == "XMSGID.Q1.0"
    [spam] = rx.of("spamreport")
    assert spam["email"] == "c@dest.test"
    left = await db.read(lambda c: c.execute("SELECT count(*) FROM webhook_outbox").fetchone())
    assert left == (0,)


async def test_suppressed_recipients_are_dropped_and_opens_carry_the_machine_flag(
    db: Database, rx: SendGridReceiver, key_file: tuple[Path, str]
) -> None:
    rcpts = (PreparedRecipient("ok@dest.test"),
             PreparedRecipient("left@dest.test", suppressed="unsubscribe"),
             PreparedRecipient("dead@dest.test", suppressed="userunknown"),
             PreparedRecipient("spam@dest.test", suppressed="feedback"),
             PreparedRecipient("op@dest.test", suppressed="manual"))  # fmt: skip
    async with Running(db, [sg_hook(rx.url, key_file[0])]):
        await Spool(db).enqueue(replace(message("Q1", []), recipients=rcpts), [api_event("Q1")])
        await until(lambda: len(rx.of("dropped")) == 4)
        await EventLog(db).emit(
            Event("open", 2.0, "Q1", "ok@dest.test", (("idx", 0), ("machine", True),
                                                      ("user_agent", "Mozilla/5.0"))),
        )  # fmt: skip
        await until(lambda: len(rx.of("open")) == 1)
    assert len(rx.of("processed")) == 5  # SendGrid: processed, then dropped
    reasons = {e["email"]: e["reason"] for e in rx.of("dropped")}
    assert reasons == {"left@dest.test": "Unsubscribed Address",
                       "dead@dest.test": "Bounced Address",
                       "spam@dest.test": "Spam Reporting Address",
                       "op@dest.test": "Unsubscribed Address"}  # fmt: skip
    assert {e["sg_message_id"] for e in rx.of("dropped")} == {
        f"XMSGID.Q1.{i}" for i in (1, 2, 3, 4)
    }
    [opened] = rx.of("open")
    assert opened["sg_machine_open"] is True and opened["useragent"] == "Mozilla/5.0"
    assert "ip" not in opened  # not recorded: not sent as null


async def test_due_events_of_many_messages_share_a_post_up_to_batch_size(
    db: Database, rx: SendGridReceiver, key_file: tuple[Path, str]
) -> None:
    """20 events committed together: arrays of at most ``batch_size``, each event once."""
    async with Running(db, [sg_hook(rx.url, key_file[0], batch_size=7, concurrency=1)]):
        await EventLog(db).emit(*[
            Event("delivered", 1.0, f"Q{i}", f"r{i}@dest.test", (("reply", "250 ok"),))
            for i in range(20)
        ])  # fmt: skip
        await until(lambda: len(rx.events) == 20)
    sizes = [len(json.loads(body)) for _, body in rx.posts]
    assert sizes == [7, 7, 6]
    assert sorted(e["email"] for e in rx.events) == sorted(f"r{i}@dest.test" for i in range(20))


async def test_a_failed_post_is_retried_whole_with_the_same_event_ids(
    db: Database, rx: SendGridReceiver, key_file: tuple[Path, str]
) -> None:
    seen: list[list[str]] = []

    def decide(batch: list[dict[str, Any]]) -> int:
        seen.append([e["sg_event_id"] for e in batch])
        return 500 if len(seen) < 3 else 200

    rx.decide = decide
    async with Running(db, [sg_hook(rx.url, key_file[0])]):
        await EventLog(db).emit(
            Event("bounced", 1.0, "QA", "a@dest.test", (("kind", "hard"), ("status", "5.1.1"))),
            Event("bounced", 1.0, "QB", "b@dest.test", (("kind", "hard"), ("status", "5.1.1"))),
        )
        await until(lambda: len(rx.events) == 2)
    assert [e["type"] for e in rx.events] == ["bounce", "bounce"]
    assert len(seen[0]) == 2  # both in the first POST
    ids = [i for batch in seen for i in batch]
    assert set(ids) == {e["sg_event_id"] for e in rx.events} and len(set(ids)) == 2
    assert all(ids.count(i) >= 2 for i in ids)  # retried (alone or together), ids unchanged


async def test_a_wrong_key_fails_verification_and_nothing_is_taken(
    db: Database, rx: SendGridReceiver, tmp_path: Path
) -> None:
    """The check can fail: signed with a key the receiver does not hold → 401, retried."""
    other = tmp_path / "other.pem"
    keygen(other)
    async with Running(db, [sg_hook(rx.url, other)]):
        await EventLog(db).emit(Event("delivered", 1.0, "Q", "a@dest.test", ()))
        await until(lambda: rx.bad >= 2)
    assert rx.events == []


async def test_reload_rotates_the_key_and_a_bad_key_keeps_the_old_one(
    db: Database, rx: SendGridReceiver, key_file: tuple[Path, str], tmp_path: Path
) -> None:
    new_public = keygen(tmp_path / "new.pem")
    (tmp_path / "junk.pem").write_text("junk\n")

    def config(key: str) -> Any:
        return parse_config(
            f"[[webhooks]]\nname = 'sg'\nurl = '{rx.url}'\nformat = 'sendgrid'\n"
            f"signing_key = '{key}'\nretry_interval = '50ms'\n", tmp_path / "config.toml"
        )  # fmt: skip

    log = EventLog(db)
    async with Running(db, [sg_hook(rx.url, key_file[0])]) as dispatcher:
        await log.emit(Event("delivered", 1.0, "Q1", "a@dest.test", ()))
        await until(lambda: len(rx.events) == 1)
        with pytest.raises(ConfigError, match=r"webhooks\[0\]\.signing_key: .*junk\.pem"):
            await dispatcher.reload(config("junk.pem"))
        await log.emit(Event("delivered", 1.0, "Q2", "b@dest.test", ()))
        await until(lambda: len(rx.events) == 2)  # still signed with the old key
        rx.verifier = EventWebhook(new_public)  # the receiver is told the new public key
        await dispatcher.reload(config("new.pem"))
        await log.emit(Event("delivered", 1.0, "Q3", "c@dest.test", ()))
        await until(lambda: len(rx.events) == 3)
    assert rx.bad == 0 and [e["email"] for e in rx.events][-1] == "c@dest.test"


def test_sendgrid_event_types_filter_what_is_sent() -> None:
    from mtaserver.model import StoredEvent
    from mtaserver.storage.sqlite.outbox import MessageContext

    ctx = MessageContext("m@x", None, False, "X", (), (), 5, ((0, "a@dest.test"),))
    unsub = StoredEvent(1, 1.0, "unsubscribe", "Q", "a@dest.test", {"idx": 0})
    assert [e["event"] for e in sg.to_sendgrid(unsub, ctx)] == ["group_unsubscribe"]
    assert sg.to_sendgrid(unsub, ctx, ("unsubscribe",)) == []
    plain = replace(ctx, asm_group_id=None)
    assert [e["event"] for e in sg.to_sendgrid(unsub, plain, ("unsubscribe",))] == ["unsubscribe"]
    accepted = StoredEvent(2, 1.0, "accepted", "Q", None, {"send_at": 1234.0})
    [processed] = sg.to_sendgrid(accepted, ctx)
    assert processed["send_at"] == 1234 and processed["sg_message_id"] == "X.Q.0"
    assert sg.to_sendgrid(accepted, ctx, ("bounce",)) == []
    assert sg.to_sendgrid(accepted, replace(ctx, is_dsn=True)) == []  # our DSNs: not shown
    for kind in ("dsn_sent", "deleted", "cancelled", "api_message", "erased"):
        assert sg.to_sendgrid(StoredEvent(3, 1.0, kind, "Q", "a@dest.test", {}), ctx) == []


# -- end to end: HTTP send API → MX → tracking → SendGrid-shaped events ---------------------
async def test_send_api_delivery_bounce_open_click_in_sendgrids_shape(
    tmp_path: Path, key_file: tuple[Path, str], rx: SendGridReceiver
) -> None:
    path = key_file[0]
    api = ApiDaemon(tmp_path)
    track_port = free_port()
    base = f"http://127.0.0.1:{track_port}"
    api.cfg.set("tracking", listen=f"127.0.0.1:{track_port}", base_url=base,
                scanner_window="1ms", burst_window="1ms")  # fmt: skip
    api.cfg.data["webhooks"] = [{"url": rx.url, "format": "sendgrid", "signing_key": str(path),
                                 "retry_interval": "100ms"}]  # fmt: skip
    api.sinks["127.0.0.2"].rcpt_replies["gone@dest.test"] = "550 5.1.1 no such user here"
    async with api:
        client = SendGridAPIClient(api.key, host=api.base_url)
        mail = Mail(from_email="app@example.com", subject="Welcome",
                    html_content='<p>Hi, see <a href="https://example.com/offer?id=7">the '
                                 "offer</a>.</p>")  # fmt: skip
        p = Personalization()
        p.add_to(To("reader@dest.test"))
        p.add_to(To("gone@dest.test"))
        p.add_custom_arg(CustomArg("user_id", "u-42"))
        mail.add_personalization(p)
        mail.add_category(Category("onboarding"))
        mail.add_category(Category("week-1"))
        mail.add_custom_arg(CustomArg("campaign_ref", "c-9"))
        mail.tracking_settings = TrackingSettings(
            click_tracking=ClickTracking(True, True), open_tracking=OpenTracking(True)
        )
        r = await asyncio.to_thread(client.send, mail)
        assert r.status_code == 202
        x_message_id = r.headers["X-Message-Id"]

        await api.wait_messages(1)
        got = api.sink.messages[0]
        assert got.rcpt_tos == ["reader@dest.test"]
        header_id = email.message_from_bytes(got.data)["Message-ID"]
        html = next(part.get_payload(decode=True).decode()
                    for part in email.message_from_bytes(got.data).walk()
                    if part.get_content_type() == "text/html")  # fmt: skip
        [pixel] = re.findall(r'<img src="([^"]+\.gif)"', html)
        [link] = re.findall(r'href="(' + re.escape(base) + r'/c/[^"]+)"', html)
        await wait_for(lambda: bool(rx.of("delivered") and rx.of("bounce")), 30)
        async with aiohttp.ClientSession(headers={"User-Agent": BROWSER}) as http:
            async with http.get(pixel) as resp:
                assert resp.status == 200
            async with http.get(link, allow_redirects=False) as resp:
                assert resp.status == 302
        await wait_for(lambda: bool(rx.of("open") and rx.of("click")), 30)

        # a message over SMTP: the same shape, sg_message_id from its queue id
        host, port = api.cfg.address("submission", "listen_plain")

        def smtp() -> None:
            with smtplib.SMTP(host, port, timeout=30) as s:
                s.sendmail("app@example.com", ["smtp@dest.test"],
                           b"From: app@example.com\r\nTo: smtp@dest.test\r\nSubject: s"
                           b"\r\n\r\nhi\r\n")  # fmt: skip

        await asyncio.to_thread(smtp)
        await wait_for(lambda: bool(rx.of("delivered", "smtp@dest.test")), 30)
        [(smtp_qid,)] = api.query("SELECT queue_id FROM recipients WHERE address='smtp@dest.test'")
    assert rx.bad == 0

    def common(e: dict[str, Any], rcpt: str, idx: int) -> None:
        assert e["email"] == rcpt and isinstance(e["timestamp"], int)
        assert abs(e["timestamp"] - time.time()) < 120
        assert e["sg_message_id"].split(".")[0] == x_message_id  # how receivers match it
        assert e["sg_message_id"].endswith(f".{idx}")
        assert e["smtp-id"] == header_id
        assert sorted(e["category"]) == ["onboarding", "week-1"]  # the SDK prepends each
        assert e["user_id"] == "u-42" and e["campaign_ref"] == "c-9"  # custom args, flat

    processed = {e["email"]: e for e in rx.of("processed")}
    assert set(processed) >= {"reader@dest.test", "gone@dest.test"}
    common(processed["reader@dest.test"], "reader@dest.test", 0)
    common(processed["gone@dest.test"], "gone@dest.test", 1)
    [delivered] = rx.of("delivered", "reader@dest.test")
    common(delivered, "reader@dest.test", 0)
    assert delivered["response"].startswith("250")
    [bounce] = rx.of("bounce")
    common(bounce, "gone@dest.test", 1)
    assert bounce["type"] == "bounce" and bounce["status"] == "5.1.1"
    assert "550 5.1.1 no such user here" in bounce["reason"]
    [opened] = rx.of("open")
    common(opened, "reader@dest.test", 0)
    assert opened["useragent"] == BROWSER and opened["ip"]
    [click] = rx.of("click")
    common(click, "reader@dest.test", 0)
    assert click["url"] == "https://example.com/offer?id=7"
    # per message, in order: processed before delivered before open
    order = [e["event"] for e in rx.events if e["email"] == "reader@dest.test"]
    assert order.index("processed") < order.index("delivered") < order.index("open")
    assert all(e["email"] != "app@example.com" for e in rx.events)  # not the bounce's DSN
    smtp_events = {e["event"]: e for e in rx.events if e["email"] == "smtp@dest.test"}
    assert set(smtp_events) == {"processed", "delivered"}
    assert smtp_events["delivered"]["sg_message_id"] == f"{smtp_qid}.0"
    assert "category" not in smtp_events["delivered"]
    # every POST verifies with SendGrid's helper; a changed byte in any of them does not
    for headers, body in rx.posts:
        assert rx.verified(headers, body)
        tampered = body.replace(b'"timestamp":1', b'"timestamp":2', 1)
        assert tampered != body and not rx.verified(headers, tampered)
