"""Three database states every operator command must survive, built through our own storage
code (Spool, EventLog, SuppressionStore, UserStore, TokenStore, WebhookOutbox, the tracking
recorder's store), never by hand-written SQL:

- ``empty``: a fresh data directory, migrations applied, nothing else;
- ``final``: mail was sent and every recipient is final (delivered, bounced, expired,
  suppressed at submission); nothing is queued;
- ``busy``: the ``final`` history plus queued, deferred, leased and held recipients across
  several domains, a DSN, per-recipient bodies, opens and clicks, complaints and
  unsubscribes, suppressions (global, scoped, expired), soft bounces, users, an admin
  token and webhook outbox rows (pending, waiting, failed), API keys (active, revoked),
  stored templates with several versions, a paused send batch, and contacts on a list.

``build(state, path)`` writes one state's database and returns what a test needs to name
things in it (``Facts``). Tests copy a state with ``mtaserver.storage.sqlite.backup.backup_sync`` (the
file alone, without its WAL, is not a copy).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path

from mtaserver.auth import hash_password
from mtaserver.config.webhooks import WebhookConfig
from mtaserver.contacts import ContactInput
from mtaserver.model import (
    Event,
    PreparedMessage,
    PreparedRecipient,
    RecipientState,
    RecipientUpdate,
)
from mtaserver.storage.sqlite.apikeys import ApiKeyStore
from mtaserver.storage.sqlite.contacts import ContactStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.events import EventLog
from mtaserver.storage.sqlite.outbox import Settlement, WebhookOutbox
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.storage.sqlite.templates import TemplateStore
from mtaserver.storage.sqlite.tokens import TokenStore
from mtaserver.storage.sqlite.tracking import SqlTrackingStore
from mtaserver.storage.sqlite.users import UserStore

STATES = ("empty", "final", "busy")
WEBHOOK = "hook"  # the [[webhooks]] name the test config must use
SENDER_DOMAIN = "example.com"
# A password hash made once at import: scrypt at full cost per user would dominate the build.
_HASH = hash_password("correct horse battery", n=2**10)


@dataclass
class Facts:
    """Names in a built state; ``None`` where the state has no such thing."""

    state: str
    queued: str | None = None  # a message with queued (and held, leased) recipients
    final: str | None = None  # a message whose every recipient is final
    user: str | None = None
    token: str | None = None  # an active admin token's name
    suppressed: str | None = None  # an address with a global suppression
    recipient: str | None = None  # an address that received mail (final)
    apikey: str | None = None  # an active API key's id
    template: str | None = None  # a stored template's name (two versions)
    contact: str | None = None  # a contact of ``user`` (on a list)
    domains: list[str] = field(default_factory=list)


def build(state: str, path: Path, now: float | None = None) -> Facts:
    if state not in STATES:
        raise ValueError(state)
    return asyncio.run(_build(state, path, time.time() if now is None else now))


def _message(
    qid: str, rcpts: list[PreparedRecipient], at: float, *, campaign: str | None = "spring",
    sender: str = f"app@{SENDER_DOMAIN}", user: str | None = "alice@example.com",
    is_dsn: bool = False,
) -> PreparedMessage:  # fmt: skip
    return PreparedMessage(
        queue_id=qid,
        sender=sender,
        recipients=tuple(rcpts),
        data=f"From: {sender or 'MAILER-DAEMON@mta.test'}\r\nSubject: {qid}\r\n\r\nhello\r\n".encode(),
        user=user,
        client_ip="127.0.0.1",
        received_at=at,
        message_id=f"{qid}@mta.test",
        campaign=campaign,
        is_dsn=is_dsn,
        dsn=not is_dsn,
    )


async def _build(state: str, path: Path, now: float) -> Facts:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = Database(path)
    await db.open()
    try:
        facts = Facts(state)
        if state != "empty":
            await _history(db, now, facts)
        if state == "busy":
            await _busy(db, now, facts)
        return facts
    finally:
        await db.close()


async def _history(db: Database, now: float, facts: Facts) -> None:
    """Mail accepted two hours ago and finished: every recipient ends final."""
    spool, events = Spool(db), EventLog(db)
    outbox = WebhookOutbox(db)
    # A webhook that wants everything: each event below also lands in its outbox.
    await outbox.sync([WebhookConfig(WEBHOOK, "http://127.0.0.1:9/hook", (), b"secret")])
    t0 = now - 7200
    q_done, q_mixed, q_expired = (new_queue_id(t0 + i) for i in range(3))
    await spool.enqueue(
        _message(q_done, [PreparedRecipient("r1@one.test"), PreparedRecipient("r2@two.test")], t0)
    )
    await spool.enqueue(
        _message(
            q_mixed,
            [
                PreparedRecipient("gone@one.test"),
                PreparedRecipient("fan@two.test", data=b"Subject: own copy\r\n\r\nhi\r\n"),
                PreparedRecipient("unsub@three.test", suppressed="unsubscribe"),
            ],
            t0 + 1,
        )
    )
    await spool.enqueue(_message(q_expired, [PreparedRecipient("slow@three.test")], t0 + 2))
    jobs = await spool.claim_due(now, 100, 300)
    assert jobs, "history messages were not due"
    at = now - 3600
    updates, evs = [], []
    outcome = {
        "r1@one.test": (RecipientState.DELIVERED, "250 2.0.0 ok", "delivered"),
        "r2@two.test": (RecipientState.DELIVERED, "250 2.0.0 queued", "delivered"),
        "gone@one.test": (RecipientState.BOUNCED, "550 5.1.1 no such user", "bounced"),
        "fan@two.test": (RecipientState.DELIVERED, "250 ok", "delivered"),
        "slow@three.test": (RecipientState.BOUNCED, "451 4.7.1 try later", "expired"),
    }
    for job in jobs:
        for r in job.recipients:
            st, reply, etype = outcome[r.address]
            updates.append(RecipientUpdate(job.queue_id, r.idx, st, reply))
            data: tuple[tuple[str, str | int | float | bool | None], ...] = (
                ("reply", reply),
                ("mx", "mx.test"),
            )
            if etype == "bounced":
                data += (("source", "sync"), ("kind", "hard"), ("category", "unknown-recipient"))
            evs.append(Event(etype, at, job.queue_id, r.address, data))
    await spool.record(updates, evs)
    # Tracking hits through the recorder's own store: human and machine opens, a click.
    store = SqlTrackingStore(db)
    await store.write_rows(
        [
            (at + 60, "open", q_done, 0, "Mozilla/5.0", "127.0.0.1", False, None, None, None),
            (at + 61, "open", q_done, 1, "GoogleImageProxy", "127.0.0.2", True, "proxy",
             "google", None),
            (at + 62, "click", q_done, 0, "Mozilla/5.0", "127.0.0.1", False, None, None,
             "https://example.com/a"),
            (at + 63, "click", "0000000000000000", 0, "curl/8", "127.0.0.3", True, "scanner",
             None, "https://example.com/b"),  # a token for mail since deleted
        ]
    )  # fmt: skip
    await events.emit(
        Event("complaint", at + 100, q_done, "r2@two.test", (("source", "arf"),)),
        Event("unsubscribe", at + 101, q_mixed, "fan@two.test", (("method", "one-click"),)),
    )
    supp = SuppressionStore(db)
    await supp.add("gone@one.test", "unknown-recipient", source="bounce", queue_id=q_mixed)
    await supp.add("fan@two.test", "unsubscribe", scope=SENDER_DOMAIN, source="unsubscribe")
    # Some webhook rows were sent, one was given up: the outbox has every state.
    pending = await outbox.due(WEBHOOK, now, 3)
    await outbox.settle(
        [Settlement(pending[0], "delivered", now)]
        + [Settlement(p, "failed", now, "HTTP 500") for p in pending[1:2]]
        + [Settlement(p, "retry", now + 600, "timeout") for p in pending[2:3]]
    )
    facts.final = q_done
    facts.suppressed = "gone@one.test"
    facts.recipient = "r1@one.test"
    facts.domains = ["one.test", "two.test", "three.test"]


async def _busy(db: Database, now: float, facts: Facts) -> None:
    """Work in every non-final state on top of the history."""
    spool = Spool(db)
    users = UserStore(db)
    await users.add("alice@example.com", _HASH, [SENDER_DOMAIN])
    await users.add("bob", _HASH, [SENDER_DOMAIN, "example.net"])
    await TokenStore(db).create("ops", now - 60)
    supp = SuppressionStore(db)
    await supp.add("old@one.test", "manual", expires_at=now - 10)  # expired, kept for --all
    for _ in range(2):
        await supp.apply("full@two.test", "mailbox-full", sender_domain=SENDER_DOMAIN,
                         source="bounce")  # fmt: skip

    # Due now, then leased (a delivery in flight) or deferred (attempted, waiting).
    q_leased, q_deferred = new_queue_id(now - 600), new_queue_id(now - 599)
    await spool.enqueue(_message(q_leased, [PreparedRecipient("inflight@four.test")], now - 600))
    await spool.enqueue(
        _message(
            q_deferred,
            [PreparedRecipient("grey@one.test"), PreparedRecipient("grey2@one.test")],
            now - 599,
        )
    )
    jobs = await spool.claim_due(now, 100, 3600)
    deferred = [
        RecipientUpdate(j.queue_id, r.idx, RecipientState.QUEUED, "451 4.7.1 greylisted",
                        next_attempt=now + 900)
        for j in jobs if j.queue_id == q_deferred for r in j.recipients
    ]  # fmt: skip
    await spool.record(
        deferred,
        [Event("deferred", now - 500, q_deferred, "grey@one.test", (("category", "greylisted"),))],
    )
    # Queued for later (received now, due in an hour), one of them held by an operator.
    later = now + 3600
    q_queued, q_held, q_dsn = (new_queue_id(now + i) for i in range(3))
    await spool.enqueue(
        _message(
            q_queued,
            [PreparedRecipient(f"user{i}@{d}") for i, d in enumerate(
                ["one.test", "two.test", "two.test", "five.test", "xn--bcher-kva.test"])],
            later,
        )
    )  # fmt: skip
    await spool.enqueue(
        _message(q_held, [PreparedRecipient("wait@six.test")], later, campaign=None)
    )
    await spool.hold(q_held)
    await spool.enqueue(
        _message(q_dsn, [PreparedRecipient(f"app@{SENDER_DOMAIN}")], later, sender="",
                 user=None, campaign=None, is_dsn=True)
    )  # fmt: skip
    keys = ApiKeyStore(db)
    active, _ = await keys.create("alice@example.com", frozenset({"mail.send"}), "app", now)
    revoked, _ = await keys.create("bob", frozenset({"mail.send"}), "old", now - 10)
    await keys.revoke(revoked.key_id, now - 5)
    templates = TemplateStore(db)
    await templates.put("welcome", "Hi {{name}}", "<p>Hi {{name}}</p>", "Hi {{name}}")
    await templates.put("welcome", "Hello {{name}}", None, "Hello {{name}}")
    await templates.put("receipt", "Receipt", None, "{{#each items}}{{this}}{{/each}}")
    batch = await spool.create_batch("alice@example.com", now)
    await spool.set_batch_status(batch.batch_id, "pause", now)
    contacts = ContactStore(db)
    await contacts.create_list("alice@example.com", "news")
    await contacts.import_many(
        "alice@example.com",
        [ContactInput("fan@two.test", '{"name":"Fan","plan":"pro"}'),
         ContactInput("gone@one.test", '{"name":"Gone"}', "unsubscribed")],
        list_name="news",
    )  # fmt: skip
    await contacts.upsert("bob", ContactInput("fan@two.test", '{"plan":"free"}'))
    facts.contact = "fan@two.test"
    facts.apikey = active.key_id
    facts.template = "welcome"
    facts.queued = q_queued
    facts.user = "alice@example.com"
    facts.token = "ops"
    facts.domains += ["four.test", "five.test", "six.test", SENDER_DOMAIN]
