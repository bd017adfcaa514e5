"""Events in, triggered mail out, through a real daemon to the test MX: a ``signup`` event
sends the welcome mail with the contact's name (or the template's default where the
attribute is missing); ``cart`` then ``purchase`` sends no reminder; a 3-step sequence
fires each step exactly once across a ``kill -9`` of the daemon between steps.

Time is not faked inside the daemon process: a sequence is timed from the event's
``occurred_at``, so a signup dated 3 days and 1 hour minus a few seconds ago has its first
two steps due at once and the third a few seconds after the event is posted.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from email import message_from_bytes
from email.message import Message
from pathlib import Path
from typing import Any

from tests.support.apiserver import ApiDaemon
from tests.support.mxsink import wait_for

HTML = (
    '<p>Hello {{insert contact.first_name "default=there"}}, welcome to '
    "{{campaign.name}}{{#if event.properties.plan}} on {{event.properties.plan}}{{/if}}.</p>"
)


def call(api: ApiDaemon, method: str, path: str, body: object = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": f"Bearer {api.key}", "Content-Type": "application/json"}
    req = urllib.request.Request(api.base_url + path, data, headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        return exc.code, json.loads(raw) if raw else None


async def acall(api: ApiDaemon, method: str, path: str, body: object = None) -> tuple[int, Any]:
    return await asyncio.to_thread(call, api, method, path, body)


async def template(api: ApiDaemon, tmp: Path, name: str, subject: str, html: str) -> None:
    f = tmp / f"{name}.html"
    f.write_text(html)
    assert api.daemon is not None
    out = await asyncio.to_thread(api.daemon.cli, "template", "put", name, "--subject",
                                  subject, "--html", str(f))  # fmt: skip
    assert out.returncode == 0, out.stderr


async def contacts(api: ApiDaemon, *people: dict[str, Any]) -> None:
    status, _ = await acall(api, "PUT", "/v1/contacts", {"contacts": list(people)})
    assert status == 200


def html_of(m: Message) -> str:
    for part in m.walk():
        if part.get_content_type() == "text/html":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode()
    raise AssertionError("no html part")


def received(api: ApiDaemon) -> list[tuple[str, Message]]:
    return [(r.rcpt_tos[0], message_from_bytes(r.data)) for r in api.sink.messages]


async def test_signup_sends_the_welcome_mail_with_the_name_or_the_default(tmp_path: Path) -> None:
    async with ApiDaemon(tmp_path) as api:
        await template(api, tmp_path, "welcome", "Welcome, {{insert contact.first_name "
                       "\"default=friend\"}}", HTML)  # fmt: skip
        await contacts(api, {"email": "ann@dest.test", "attributes": {"first_name": "Ann"}},
                       {"email": "bo@dest.test"})  # fmt: skip
        status, body = await acall(api, "PUT", "/v1/triggers/welcome", {
            "event": "signup", "steps": [{"wait": "0s", "template": "welcome"}],
            "from": {"email": "hello@example.com", "name": "Example"}})  # fmt: skip
        assert status == 201, body
        status, body = await acall(api, "PUT", "/v1/triggers/bad", {
            "event": "signup", "steps": [{"wait": "0s", "template": "nope"}],
            "from": "hello@example.com"})  # fmt: skip
        assert status == 400 and body["errors"][0]["field"] == "steps[0].template"
        status, body = await acall(api, "POST", "/v1/events", {"events": [
            {"contact": "ann@dest.test", "event": "signup", "properties": {"plan": "pro"}},
            {"contact": "bo@dest.test", "event": "signup"},
            {"contact": "nobody@dest.test", "event": "signup"}]})  # fmt: skip
        assert status == 202, body
        assert body == {"stored": 2, "started": 2, "cancelled": 0,
                        "unknown_contacts": ["nobody@dest.test"]}  # fmt: skip
        await api.wait_messages(2)
        got = dict(received(api))
        assert got["ann@dest.test"]["Subject"] == "Welcome, Ann"
        assert "Hello Ann, welcome to welcome on pro." in html_of(got["ann@dest.test"])
        assert got["bo@dest.test"]["Subject"] == "Welcome, friend"
        assert "Hello there, welcome to welcome." in html_of(got["bo@dest.test"])
        assert all(api.dkim_ok(r.data) for r in api.sink.messages)  # the same pipeline
        status, body = await acall(api, "GET", "/v1/triggers/welcome")
        assert status == 200 and body["step_counts"]["0"]["fired"] == 2


async def test_cart_then_purchase_sends_no_reminder(tmp_path: Path) -> None:
    async with ApiDaemon(tmp_path) as api:
        await template(api, tmp_path, "reminder", "You left {{event.properties.sku}}",
                       "<p>{{event.properties.sku}} is waiting</p>")  # fmt: skip
        await contacts(api, {"email": "ann@dest.test"}, {"email": "bo@dest.test"})
        status, _ = await acall(api, "PUT", "/v1/triggers/cart", {
            "event": "cart", "steps": [{"wait": "3s", "template": "reminder"}],
            "cancel": ["purchase"], "once_per": "1d", "from": "shop@example.com"})  # fmt: skip
        assert status == 201
        for who in ("ann", "bo"):
            status, _ = await acall(api, "POST", "/v1/events", {
                "contact": f"{who}@dest.test", "event": "cart",
                "properties": {"sku": f"{who}-1"}})  # fmt: skip
            assert status == 202
        status, body = await acall(
            api, "POST", "/v1/events", {"contact": "ann@dest.test", "event": "purchase"}
        )
        assert status == 202 and body["cancelled"] == 1
        await api.wait_messages(1, timeout=30)  # bo's reminder: the 3 s have passed
        await asyncio.sleep(1.5)  # ann's was due at the same time: nothing more comes
        assert [(to, m["Subject"]) for to, m in received(api)] == [("bo@dest.test",
                                                                    "You left bo-1")]  # fmt: skip
        states = api.query("SELECT c.address, s.state FROM journey_steps s JOIN contacts c "
                           "ON c.id = s.contact_id ORDER BY c.address")  # fmt: skip
        assert states == [("ann@dest.test", "cancelled"), ("bo@dest.test", "fired")]


async def test_three_steps_fire_once_each_across_kill_9(tmp_path: Path) -> None:
    async with ApiDaemon(tmp_path) as api:
        for n in (1, 2, 3):
            await template(api, tmp_path, f"step{n}", f"Step {n} for {{{{contact.email}}}}",
                           f"<p>step {n}</p>")  # fmt: skip
        await contacts(api, {"email": "ann@dest.test"})
        status, _ = await acall(api, "PUT", "/v1/triggers/onboarding", {
            "event": "signup", "from": "hello@example.com",
            "steps": [{"wait": "0s", "template": "step1"}, {"wait": "1h", "template": "step2"},
                      {"wait": "3d", "template": "step3"}]})  # fmt: skip
        assert status == 201
        lead = 8.0  # seconds from posting the event to the third step
        occurred = time.time() - 3600 - 3 * 86400 + lead
        status, _ = await acall(
            api,
            "POST",
            "/v1/events",
            {"contact": "ann@dest.test", "event": "signup", "occurred_at": occurred},
        )
        assert status == 202

        def fired() -> list[tuple[int, str, str | None]]:
            return [(int(r[0]), str(r[1]), r[2]) for r in api.query(
                "SELECT step, state, queue_id FROM journey_steps ORDER BY step")]  # fmt: skip

        def delivered() -> int:
            return int(api.query("SELECT count(*) FROM recipients WHERE state='delivered'")[0][0])

        await wait_for(lambda: delivered() == 2, 20)  # steps 1 and 2: overdue, sent at once
        assert [s for _, s, _ in fired()] == ["fired", "fired", "pending"]
        assert api.daemon is not None
        await asyncio.to_thread(api.daemon.kill)  # SIGKILL: no drain, no clean shutdown
        await api.start()
        await wait_for(lambda: delivered() == 3, 30)
        await asyncio.sleep(1.5)  # a doubled step would be queued by now
        steps = fired()
        assert [s for _, s, _ in steps] == ["fired"] * 3
        assert len({q for _, _, q in steps}) == 3
        assert int(api.query("SELECT count(*) FROM messages")[0][0]) == 3
        subjects = sorted(m["Subject"] for _, m in received(api))
        assert subjects == [f"Step {n} for ann@dest.test" for n in (1, 2, 3)]
