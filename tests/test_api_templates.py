"""``template_id`` through the HTTP send API: dynamic (Handlebars) templates rendered per
personalization before anything is signed; runaway templates refused with a 400 naming
``template_id`` and nothing queued."""

from __future__ import annotations

import email
import json
import time
from typing import Any

import aiohttp

from mtaserver.sendapi import StoredTemplate
from mtaserver.storage.sqlite.db import Database
from tests.support.apiinproc import in_process_api

WELCOME = StoredTemplate(
    subject="Welcome {{name}}",
    html="<p>Hi {{name}}{{#if vip}} (VIP){{/if}}</p><ul>{{#each items}}<li>{{this}}</li>"
    "{{/each}}</ul>",
    text="Hi {{name}}{{#unless vip}}, regular{{/unless}}. {{{raw}}} {{esc}}",
)
LOOPS = StoredTemplate(subject="x", text="{{#each a}}{{#each ../a}}{{#each ../../a}}"
                       "{{this}}{{/each}}{{/each}}{{/each}}")  # fmt: skip
EXPANDS = StoredTemplate(subject="x", text="{{#each a}}{{../big}}{{../big}}{{/each}}")


async def post(api: Any, body: dict[str, Any]) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as s, s.post(
        api.base_url + "/v3/mail/send", json=body,
        headers={"Authorization": f"Bearer {api.key}"},
    ) as r:  # fmt: skip
        raw = await r.read()
        return r.status, json.loads(raw) if raw else None


def mail(template: str, personalizations: list[dict[str, Any]]) -> dict[str, Any]:
    return {"personalizations": personalizations, "from": {"email": "app@example.com"},
            "template_id": template}  # fmt: skip


async def bodies(api: Any) -> dict[str, Any]:
    rows = await api.db.read(
        lambda c: c.execute(
            "SELECT r.address, m.body FROM recipients r JOIN messages m ON m.id = r.queue_id"
        ).fetchall()
    )
    return {a: email.message_from_bytes(b) for a, b in rows}


def part(msg: Any, ctype: str) -> str:
    for p in msg.walk():
        if p.get_content_type() == ctype:
            return str(p.get_payload(decode=True).decode())
    raise AssertionError(ctype)


async def test_dynamic_template_per_personalization(db: Database) -> None:
    async with in_process_api(db, {"d-welcome": WELCOME}) as api:
        people = [
            {"name": "Ann", "vip": True, "items": ["a1", "a2"], "raw": "<b>", "esc": "<i>"},
            {"name": "Bob", "vip": False, "items": [], "raw": "&", "esc": "&"},
            {"name": "Cyd <x>", "items": ["c"], "raw": "", "esc": ""},
        ]
        ps = [{"to": [{"email": f"p{i}@dest.test"}], "dynamic_template_data": d}
              for i, d in enumerate(people)]  # fmt: skip
        status, _ = await post(api, mail("d-welcome", ps))
        assert status == 202
        got = await bodies(api)
        assert got["p0@dest.test"]["Subject"] == "Welcome Ann"
        assert "<p>Hi Ann (VIP)</p><ul><li>a1</li><li>a2</li></ul>" in part(
            got["p0@dest.test"], "text/html"
        )
        assert part(got["p0@dest.test"], "text/plain").strip() == "Hi Ann. <b> &lt;i&gt;"
        assert part(got["p1@dest.test"], "text/plain").strip() == "Hi Bob, regular. & &amp;"
        assert "Hi Cyd &lt;x&gt;</p>" in part(got["p2@dest.test"], "text/html")
        # Handlebars escapes in the subject too, as SendGrid does ({{{name}}} does not).
        assert got["p2@dest.test"]["Subject"] == "Welcome Cyd &lt;x&gt;"


async def test_runaway_templates_are_refused_and_nothing_is_queued(db: Database) -> None:
    async with in_process_api(db, {"d-loops": LOOPS, "d-expands": EXPANDS}) as api:
        loops = mail(
            "d-loops",
            [{"to": [{"email": "l@dest.test"}], "dynamic_template_data": {"a": list(range(300))}}],
        )
        big = mail(
            "d-expands",
            [
                {
                    "to": [{"email": "e@dest.test"}],
                    "dynamic_template_data": {"a": list(range(1000)), "big": "y" * 100_000},
                }
            ],
        )
        for body in (loops, big):
            started = time.monotonic()
            status, answer = await post(api, body)
            assert status == 400, answer
            assert answer["errors"][0]["field"] == "template_id"
            assert time.monotonic() - started < 5
        status, answer = await post(api, mail("d-unknown", [{"to": [{"email": "u@dest.test"}]}]))
        assert status == 400 and answer["errors"][0]["field"] == "template_id"
        assert await api.recipients() == []


async def test_a_render_over_the_inline_budget_is_redone_with_the_full_one(db: Database) -> None:
    """A one-message request is composed on the loop under a small step budget; a template
    that needs more (here ~20,000 steps) is rendered again in a worker thread, not refused."""
    many = StoredTemplate(subject="x", text="{{#each a}}{{this}},{{/each}}")
    async with in_process_api(db, {"d-many": many}) as api:
        p = [{"to": [{"email": "m@dest.test"}], "dynamic_template_data": {"a": list(range(20000))}}]
        status, _ = await post(api, mail("d-many", p))
        assert status == 202
        text = part((await bodies(api))["m@dest.test"], "text/plain")
        assert text.startswith("0,1,2,") and text.strip().endswith("19998,19999,")
