"""SendGrid's own Python SDK (``sendgrid``) against a running daemon's HTTP send API.

Only the base URL and the API key differ from an application talking to SendGrid. Every
accepted message must reach the test MX with its recipient's own content and a valid DKIM
signature; every refused request must answer SendGrid's status and error body naming the
field, and queue nothing.
"""

from __future__ import annotations

import asyncio
import base64
import email
import json
import time
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from python_http_client.exceptions import HTTPError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import (
    Attachment,
    BatchId,
    ContentId,
    Disposition,
    FileContent,
    FileName,
    FileType,
    Mail,
    Personalization,
    SendAt,
    Substitution,
    To,
)

from tests.support.apiserver import ApiDaemon


def parsed(data: bytes) -> Message:
    return email.message_from_bytes(data)


def text_of(msg: Message, ctype: str = "text/plain") -> str:
    for part in msg.walk():
        if part.get_content_type() == ctype:
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode(part.get_content_charset() or "utf-8")
    raise AssertionError(f"no {ctype} part")


async def call(fn: Any, *args: Any, **kw: Any) -> Any:
    """The SDK is synchronous (urllib): run it off the test's event loop (the MX sink)."""
    return await asyncio.to_thread(fn, *args, **kw)


async def refused(fn: Any, *args: Any, **kw: Any) -> tuple[int, dict[str, Any]]:
    try:
        await call(fn, *args, **kw)
    except HTTPError as exc:
        return exc.status_code, json.loads(exc.body or b"{}")
    raise AssertionError("the request was accepted")


async def test_python_sdk_sends_plain_personalized_attachments_and_scheduled(
    tmp_path: Path,
) -> None:
    async with ApiDaemon(tmp_path) as api:
        sg = SendGridAPIClient(api.key, host=api.base_url)

        # 1. a plain message, built with the SDK's helpers and sent with sg.send()
        plain = Mail(from_email="App <app@example.com>", to_emails="plain@dest.test",
                     subject="Plain hello", plain_text_content="Just text.",
                     html_content="<p>Just <b>html</b>.</p>")  # fmt: skip
        r = await call(sg.send, plain)
        assert r.status_code == 202 and r.headers["X-Message-Id"]
        await api.wait_messages(1)
        got = api.sink.messages[0]
        assert got.rcpt_tos == ["plain@dest.test"] and api.dkim_ok(got.data)
        m = parsed(got.data)
        assert m["Subject"] == "Plain hello" and m["From"] == "App <app@example.com>"
        assert text_of(m).strip() == "Just text."
        assert "<b>html</b>" in text_of(m, "text/html")

        # 2. three personalizations, each with its own substitutions and subject
        mail = Mail(from_email="app@example.com", subject="Hi -name-",
                    plain_text_content="Dear -name-, your code is -code-.")  # fmt: skip
        for i, name in enumerate(["Ann", "Bob", "Cyd"]):
            p = Personalization()
            p.add_to(To(f"{name.lower()}@dest.test"))
            p.add_substitution(Substitution("-name-", name))
            p.add_substitution(Substitution("-code-", f"C{i}"))
            mail.add_personalization(p)
        r = await call(sg.send, mail)
        assert r.status_code == 202
        await api.wait_messages(4)
        by_rcpt = {tuple(x.rcpt_tos): x for x in api.sink.messages[1:4]}
        for i, name in enumerate(["Ann", "Bob", "Cyd"]):
            x = by_rcpt[(f"{name.lower()}@dest.test",)]
            assert api.dkim_ok(x.data)
            mm = parsed(x.data)
            assert mm["Subject"] == f"Hi {name}" and mm["To"] == f"{name.lower()}@dest.test"
            assert text_of(mm).strip() == f"Dear {name}, your code is C{i}."
            assert all(o not in text_of(mm) for o in {"Ann", "Bob", "Cyd"} - {name})

        # 3. attachments: one file, one inline image with a content id
        pdf = b"%PDF-1.4 fake pdf bytes \x00\x01\x02" * 100
        png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
        att = Mail(from_email="app@example.com", to_emails="att@dest.test", subject="Files",
                   html_content='<p>see <img src="cid:logo1"></p>')  # fmt: skip
        att.add_attachment(Attachment(FileContent(base64.b64encode(pdf).decode()),
                                      FileName("report.pdf"), FileType("application/pdf"),
                                      Disposition("attachment")))  # fmt: skip
        att.add_attachment(Attachment(FileContent(base64.b64encode(png).decode()),
                                      FileName("logo.png"), FileType("image/png"),
                                      Disposition("inline"), ContentId("logo1")))  # fmt: skip
        assert (await call(sg.send, att)).status_code == 202
        await api.wait_messages(5)
        x = api.sink.messages[4]
        assert x.rcpt_tos == ["att@dest.test"] and api.dkim_ok(x.data)
        parts = {p.get_filename(): p for p in parsed(x.data).walk() if p.get_filename()}
        assert parts["report.pdf"].get_payload(decode=True) == pdf
        assert parts["report.pdf"].get_content_disposition() == "attachment"
        assert parts["logo.png"].get_payload(decode=True) == png
        assert parts["logo.png"]["Content-ID"] == "<logo1>"

        # 4. send_at in the future in a batch, then cancel the batch; a control message
        #    scheduled for the same time in another batch proves the wait and the cancel.
        batch = json.loads((await call(sg.client.mail.batch.post)).body)["batch_id"]
        other = json.loads((await call(sg.client.mail.batch.post)).body)["batch_id"]
        check = await call(sg.client.mail.batch._(batch).get)
        assert check.status_code == 200 and json.loads(check.body) == {"batch_id": batch}
        at = int(time.time()) + 4
        for b, to in ((batch, "cancelled@dest.test"), (other, "control@dest.test")):
            s = Mail(from_email="app@example.com", to_emails=to, subject="Later",
                     plain_text_content="scheduled")  # fmt: skip
            s.send_at = SendAt(at)
            s.batch_id = BatchId(b)
            assert (await call(sg.send, s)).status_code == 202
        r = await call(sg.client.user.scheduled_sends.post,
                       request_body={"batch_id": batch, "status": "cancel"})  # fmt: skip
        assert r.status_code == 201 and json.loads(r.body) == {"batch_id": batch,
                                                                "status": "cancel"}  # fmt: skip
        listed = json.loads((await call(sg.client.user.scheduled_sends.get)).body)
        assert listed == [{"batch_id": batch, "status": "cancel"}]
        await api.wait_messages(6, timeout=30)
        control = api.sink.messages[5]
        assert control.rcpt_tos == ["control@dest.test"] and api.dkim_ok(control.data)
        assert time.time() >= at - 0.5  # not before send_at
        await asyncio.sleep(1.0)
        assert all(m.rcpt_tos != ["cancelled@dest.test"] for m in api.sink.messages)
        states = api.query("SELECT state FROM recipients WHERE address='cancelled@dest.test'")
        assert states == [("suppressed",)]
        events = api.query("SELECT type FROM events WHERE recipient='cancelled@dest.test'")
        assert ("cancelled",) in events


def _body(**over: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "personalizations": [{"to": [{"email": "a@dest.test"}]}],
        "from": {"email": "app@example.com"},
        "subject": "hi",
        "content": [{"type": "text/plain", "value": "hello"}],
    }
    body.update(over)
    return {k: v for k, v in body.items() if v is not None}


async def test_python_sdk_bad_input_is_refused_naming_the_field(tmp_path: Path) -> None:
    async with ApiDaemon(tmp_path) as api:
        sg = SendGridAPIClient(api.key, host=api.base_url)
        send = sg.client.mail.send.post
        no_to = _body(personalizations=[{"cc": [{"email": "c@dest.test"}]}])
        cases: list[tuple[dict[str, Any], int, str | None]] = [
            (_body(personalizations=None), 400, "personalizations"),
            (_body(**{"from": None}), 400, "from.email"),
            (_body(subject=None), 400, "subject"),
            (_body(content=None), 400, "content"),
            (no_to, 400, "personalizations.0.to"),
            (_body(personalizations="x"), 400, "personalizations"),
            (_body(**{"from": 5}), 400, "from"),
            (_body(content=[{"type": "text/plain", "value": 5}]), 400, "content.0.value"),
            (_body(send_at="soon"), 400, "send_at"),
            (_body(personalizations=[{"to": [{"email": "bad"}]}]), 400,
             "personalizations.0.to.0.email"),
            (_body(personalizations=[{"to": [{"email": f"r{i}@dest.test"}]}
                                     for i in range(1001)]), 400, "personalizations"),
            (_body(template_id="d-0123456789abcdef"), 400, "template_id"),
            (_body(batch_id="no-such-batch"), 400, "batch_id"),
            (_body(**{"from": {"email": "app@not-mine.test"}}), 403, "from"),
            (_body(personalizations=[{"to": [{"email": "a@dest.test"}],
                                      "from": {"email": "x@evil.test"}}]), 403,
             "personalizations.0.from"),
        ]  # fmt: skip
        for body, status, field in cases:
            got, answer = await refused(send, request_body=body)
            assert got == status, (field, got, answer)
            fields = [e["field"] for e in answer["errors"]]
            assert field in fields, (field, answer)
            assert all(set(e) == {"message", "field", "help"} for e in answer["errors"])
        # A 34 MB body: 413 with SendGrid's message, the connection answered, not reset.
        huge = _body(content=[{"type": "text/plain", "value": "x" * (34 * 1024 * 1024)}])
        got, answer = await refused(send, request_body=huge)
        assert got == 413 and "too large" in answer["errors"][0]["message"]
        # Keys: revoked, unknown, missing scope.
        limited = await api.new_key("mail.batch.read")
        got, answer = await refused(SendGridAPIClient(limited, host=api.base_url).send,
                                    Mail("app@example.com", "a@dest.test", "s", "t"))  # fmt: skip
        assert got == 403 and answer["errors"][0]["message"] == "access forbidden"
        revoked = await api.new_key("mail.send")
        assert api.daemon is not None
        out = await call(api.daemon.cli, "apikey", "revoke", revoked.split(".")[1])
        assert out.returncode == 0, out.stderr
        for key in (revoked, "SG.unknown.key", "not-even-sg"):
            got, answer = await refused(
                SendGridAPIClient(key, host=api.base_url).client.mail.send.post,
                request_body=_body(),
            )
            assert got == 401 and answer["errors"][0]["field"] is None
        assert api.queued() == 0
        await asyncio.sleep(0.3)
        assert api.sink.messages == []
        # The same key that was refused above still sends a valid request.
        assert (await call(send, request_body=_body())).status_code == 202
        await api.wait_messages(1)
        assert api.queued() == 1


async def test_idempotency_suppressions_groups_sandbox_and_pause(tmp_path: Path) -> None:
    async with ApiDaemon(tmp_path) as api:
        sg = SendGridAPIClient(api.key, host=api.base_url)
        send = sg.client.mail.send.post
        body = _body(personalizations=[{"to": [{"email": f"i{i}@dest.test"}]}
                                       for i in range(3)])  # fmt: skip

        def keyed() -> Any:  # the SDK keeps request_headers on its client: one per call
            c = SendGridAPIClient(api.key, host=api.base_url)
            c.client.request_headers["Idempotency-Key"] = "k1"
            return c.client.mail.send.post

        first = await call(keyed(), request_body=body)
        again = await call(keyed(), request_body=body)
        assert first.status_code == again.status_code == 202
        assert first.headers["X-Message-Id"] == again.headers["X-Message-Id"]
        assert again.headers["Idempotent-Replayed"] == "true"
        got, answer = await refused(keyed(), request_body=_body(subject="other"))
        assert got == 422 and answer["errors"][0]["field"] == "Idempotency-Key"
        await api.wait_messages(3)
        assert api.queued() == 3
        # Suppressed: globally, and only for unsubscribe group 7.
        assert api.daemon is not None
        for args in (["g@dest.test"], ["grp@dest.test", "--scope", "asm-group:7"]):
            out = await call(api.daemon.cli, "suppression", "add", *args)
            assert out.returncode == 0, out.stderr
        to = [{"to": [{"email": a}]} for a in ("g@dest.test", "grp@dest.test", "ok@dest.test")]
        r = await call(send, request_body=_body(personalizations=to, asm={"group_id": 7}))
        assert r.status_code == 202
        r = await call(send, request_body=_body(personalizations=[to[1]], subject="no group"))
        assert r.status_code == 202
        await api.wait_messages(5)
        await asyncio.sleep(0.5)
        delivered = sorted(tuple(m.rcpt_tos) for m in api.sink.messages[3:])
        assert delivered == [("grp@dest.test",), ("ok@dest.test",)]
        assert len(api.sink.messages) == 5
        dropped = api.query("SELECT recipient FROM events WHERE type='suppressed' ORDER BY 1")
        assert dropped == [("g@dest.test",), ("grp@dest.test",)]
        # Sandbox mode: validated, answered 200, nothing queued.
        n = api.queued()
        r = await call(send, request_body=_body(mail_settings={"sandbox_mode": {"enable": True}}))
        assert r.status_code == 200 and api.queued() == n
        # Pause holds a batch; deleting the status releases it.
        batch = json.loads((await call(sg.client.mail.batch.post)).body)["batch_id"]
        r = await call(sg.client.user.scheduled_sends.post,
                       request_body={"batch_id": batch, "status": "pause"})  # fmt: skip
        assert r.status_code == 201
        r = await call(send, request_body=_body(batch_id=batch,
                       personalizations=[{"to": [{"email": "held@dest.test"}]}]))  # fmt: skip
        assert r.status_code == 202
        await asyncio.sleep(1.0)
        assert len(api.sink.messages) == 5
        assert api.query("SELECT state FROM recipients WHERE address='held@dest.test'") == [
            ("held",)
        ]
        one = await call(sg.client.user.scheduled_sends._(batch).get)
        assert json.loads(one.body) == [{"batch_id": batch, "status": "pause"}]
        r = await call(sg.client.user.scheduled_sends._(batch).delete)
        assert r.status_code == 204
        await api.wait_messages(6)
        assert api.sink.messages[5].rcpt_tos == ["held@dest.test"]
        assert json.loads((await call(sg.client.user.scheduled_sends.get)).body) == []


@pytest.mark.parametrize("scope", ["mail.batch.create"])
async def test_batch_ids_are_per_user(tmp_path: Path, scope: str) -> None:
    async with ApiDaemon(tmp_path) as api:
        assert api.daemon is not None
        out = await call(api.daemon.cli, "user", "add", "other", "--domain", "other.test",
                         "--password-stdin", input=b"a long password\n")  # fmt: skip
        assert out.returncode == 0
        other = SendGridAPIClient(await api.new_key("all", user="other"), host=api.base_url)
        mine = SendGridAPIClient(api.key, host=api.base_url)
        batch = json.loads((await call(mine.client.mail.batch.post)).body)["batch_id"]
        got, _ = await refused(other.client.mail.batch._(batch).get)
        assert got == 400
        got, answer = await refused(
            other.client.user.scheduled_sends.post,
            request_body={"batch_id": batch, "status": "cancel"},
        )
        assert got == 400 and answer["errors"][0]["field"] == "batch_id"
        got, answer = await refused(
            mine.client.user.scheduled_sends.post,
            request_body={"batch_id": batch, "status": "stop"},
        )
        assert got == 400 and answer["errors"][0]["field"] == "status"
