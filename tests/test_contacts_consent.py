"""Suppression and consent are one source of truth: when a hard bounce, a complaint or an
unsubscribe suppresses an address, the owner's contact becomes unsubscribed in the same
transaction (consent_source bounce | complaint | unsubscribe). Through the store, and end to
end: a message sent with the API to a contact that the MX answers 550 5.1.1."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from mtaserver.auth import hash_password
from mtaserver.config.inbound import DEFAULT_SUPPRESSION
from mtaserver.contacts import ContactInput
from mtaserver.storage.sqlite.contacts import Contact, ContactStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.storage.sqlite.users import UserStore
from tests.support.apiserver import ApiDaemon
from tests.support.mxsink import wait_for

pytestmark = pytest.mark.pg_pending("contacts")

HASH = hash_password("correct horse battery", n=2**10)


@pytest.fixture
async def contacts(db: Database) -> AsyncIterator[ContactStore]:
    users = UserStore(db)
    await users.add("alice", HASH, ["brand-a.test"])
    await users.add("bob", HASH, ["brand-b.test"])
    store = ContactStore(db)
    for owner in ("alice", "bob"):
        for addr in ("dead@x.test", "angry@x.test", "leaver@x.test", "full@x.test"):
            await store.upsert(owner, ContactInput(addr))
    yield store


async def consent(store: ContactStore, owner: str, addr: str) -> tuple[str, str]:
    c = await store.get(owner, addr)
    assert isinstance(c, Contact)
    return c.consent_status, c.consent_source


async def test_policy_suppressions_unsubscribe_contacts(
    db: Database, contacts: ContactStore
) -> None:
    supp = SuppressionStore(db)
    # A dead address: suppressed for everyone, every owner's contact unsubscribed.
    await supp.apply("dead@x.test", "userunknown", sender_domain="brand-a.test", source="sync")
    assert await consent(contacts, "alice", "dead@x.test") == ("unsubscribed", "bounce")
    assert await consent(contacts, "bob", "dead@x.test") == ("unsubscribed", "bounce")
    # A complaint and an unsubscribe concern one sending domain: only its owner's contact.
    await supp.apply("angry@x.test", "feedback", sender_domain="brand-a.test", source="async")
    assert await consent(contacts, "alice", "angry@x.test") == ("unsubscribed", "complaint")
    assert await consent(contacts, "bob", "angry@x.test") == ("subscribed", "api")
    await supp.apply("leaver@x.test", "unsubscribe", sender_domain="brand-b.test",
                     source="tracking")  # fmt: skip
    assert await consent(contacts, "bob", "leaver@x.test") == ("unsubscribed", "unsubscribe")
    assert await consent(contacts, "alice", "leaver@x.test") == ("subscribed", "api")
    # A soft bounce is only counted; an operator's manual entry is not the person's word.
    await supp.apply("full@x.test", "mailboxfull", sender_domain="brand-a.test", source="sync")
    await supp.add("full@x.test", "manual")
    assert await consent(contacts, "alice", "full@x.test") == ("subscribed", "api")
    # An operator who narrowed complaints to "count" suppresses nothing, changes nothing.
    narrowed = dataclasses.replace(
        DEFAULT_SUPPRESSION,
        policy=tuple(
            (c, "count" if c == "complaint" else a) for c, a in DEFAULT_SUPPRESSION.policy
        ),
    )
    await SuppressionStore(db, policy=narrowed).apply(
        "angry@x.test", "feedback", sender_domain="brand-b.test", source="async"
    )
    assert await consent(contacts, "bob", "angry@x.test") == ("subscribed", "api")
    # Both rows agree: each unsubscribed contact has its suppression entry.
    rows = await db.read(lambda c: c.execute(
        "SELECT c.owner, c.address FROM contacts c WHERE c.consent_status='unsubscribed' "
        "AND NOT EXISTS (SELECT 1 FROM suppressions s WHERE s.address=c.address)").fetchall())  # fmt: skip
    assert rows == []


async def test_hard_bounce_end_to_end(tmp_path: Path) -> None:
    async with ApiDaemon(tmp_path) as api, aiohttp.ClientSession() as s:
        api.sink.rcpt_replies["dead@dest.test"] = "550 5.1.1 no such user"
        h = {"Authorization": f"Bearer {api.key}"}
        for addr in ("dead@dest.test", "alive@dest.test"):
            async with s.put(api.base_url + "/v1/contacts", json={"email": addr}, headers=h) as r:
                assert r.status == 201
        mail = {
            "personalizations": [{"to": [{"email": "dead@dest.test"}]},
                                 {"to": [{"email": "alive@dest.test"}]}],
            "from": {"email": "news@example.com"}, "subject": "hello",
            "content": [{"type": "text/plain", "value": "hi"}],
        }  # fmt: skip
        async with s.post(api.base_url + "/v3/mail/send", json=mail, headers=h) as r:
            assert r.status == 202, await r.text()
        await api.wait_messages(1)

        def suppressed() -> bool:
            return bool(api.query("SELECT 1 FROM suppressions WHERE address='dead@dest.test'"))

        await wait_for(suppressed, 30.0)
        async with s.get(api.base_url + "/v1/contacts/dead@dest.test", headers=h) as r:
            dead = json.loads(await r.read())
        assert dead["consent"]["status"] == "unsubscribed", dead
        assert dead["consent"]["source"] == "bounce"
        async with s.get(api.base_url + "/v1/contacts/alive@dest.test", headers=h) as r:
            assert json.loads(await r.read())["consent"]["status"] == "subscribed"
