"""GDPR requests over contacts against a real daemon: ``mtaserver privacy export`` holds the
contact (attributes, consent, lists) and its mail; ``privacy erase`` deletes every owner's
contact and keeps only hashed consent proofs — the address is nowhere in the database file
afterwards, yet an export of the same address finds its proofs again."""

from __future__ import annotations

import asyncio
import email
import email.policy
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.support.daemon import database_bytes
from tests.test_contacts_api import Client
from tests.test_optin import LINK, OptInDaemon, body_of, mail_to

pytestmark = pytest.mark.pg_pending("privacy", "contacts")

ADDR = "gdpr.person@x.test"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[OptInDaemon]:
    async with OptInDaemon(tmp_path) as daemon:
        yield daemon


async def cli_json(api: OptInDaemon, *args: str) -> dict[str, object]:
    assert api.daemon is not None
    out = await asyncio.to_thread(api.daemon.cli, "privacy", *args)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert isinstance(data, dict)
    return data


async def test_export_then_erase_keeps_only_hashed_proof(api: OptInDaemon) -> None:
    async with aiohttp.ClientSession() as session:
        c = Client(api, session, api.key)
        st, _ = await c.call("PUT", "/v1/contacts", {"email": ADDR, "attributes": {
            "name": "Gail Dpr", "plan": "pro", "city": "Tromsø"}})  # fmt: skip
        assert st == 201
        assert (await c.call("POST", "/v1/lists", {"name": "news", "double_opt_in": True}))[
            0
        ] == 201
        assert (await c.call("POST", "/v1/lists/news/members", {"emails": [ADDR]}))[0] == 200
        [raw] = await mail_to(api, ADDR)
        m = LINK.search(body_of(raw))
        assert m
        async with session.post(m.group(1), data={"confirm": "yes"}) as r:
            assert r.status == 200
        assert email.message_from_bytes(raw, policy=email.policy.default)["To"] == ADDR

    data = await cli_json(api, "export", ADDR)
    [contact] = data["contacts"]  # type: ignore[misc]
    assert contact["owner"] == "app" and contact["attributes"]["name"] == "Gail Dpr"
    assert contact["consent"]["source"] == "api"  # subscribed before it joined the list
    assert contact["lists"][0]["confirmed_at"]
    assert contact["lists"][0]["name"] == "news" and contact["lists"][0]["status"] == "subscribed"
    assert [r["address"] for r in data["received"]] == [ADDR]  # type: ignore[index]
    assert data["consent_proofs"] == []

    result = await cli_json(api, "erase", ADDR)
    assert result["contacts"] == 1 and result["consent_proofs"] == 2  # contact + its list
    assert api.query("SELECT count(*) FROM contacts")[0][0] == 0
    assert api.query("SELECT count(*) FROM list_members")[0][0] == 0
    proofs = api.query("SELECT owner, list_name, status, source, ip_hash, address_hash "
                       "FROM consent_proofs ORDER BY id")  # fmt: skip
    assert [p[:4] for p in proofs] == [("app", None, "subscribed", "api"),
                                       ("app", "news", "subscribed", "confirm")]  # fmt: skip
    assert len(proofs[0][5]) == 64 and proofs[0][5] == proofs[1][5]
    if api.cfg.data.get("storage", {}).get("backend") == "postgresql":
        # Nothing of the person is left in any row of any table of the cluster's database.
        tables = api.query("SELECT table_name FROM information_schema.tables "
                           "WHERE table_schema = current_schema()")  # fmt: skip
        for (t,) in tables:
            for needle in (ADDR, "Gail Dpr", "Tromsø"):
                rows = api.query(f'SELECT count(*) FROM "{t}" x WHERE strpos(x::text, ?) > 0',
                                 needle)  # fmt: skip
                assert rows == [(0,)], (t, needle)
    else:
        # Nothing of the person is left in clear anywhere in the file (secure_delete,
        # checkpoint).
        raw_db = database_bytes(api.cfg.database)
        for needle in (ADDR, "Gail Dpr", "Tromsø"):
            assert needle.encode() not in raw_db, needle
    # Presented again, the address finds its proofs; nothing else.
    again = await cli_json(api, "export", ADDR)
    assert again["contacts"] == [] and again["received"] == []
    assert [(p["list_name"], p["status"]) for p in again["consent_proofs"]] == [  # type: ignore[union-attr]
        (None, "subscribed"), ("news", "subscribed")]  # fmt: skip
    # Another address's export shows none of them.
    other = await cli_json(api, "export", "someone@x.test")
    assert other["consent_proofs"] == []
