"""The queue's part of a privacy erase on PostgreSQL (``storage.postgres.privacy`` runs
these inside its transactions): the same rewrites as the SQLite queue's maintenance
functions. A recipient row is named by its key, ``(queue_id, idx)``."""

from __future__ import annotations

import re

from mtaserver.model import FINAL_STATES, FINAL_STATES_SQL, Redaction
from mtaserver.storage.postgres.db import Connection
from mtaserver.storage.sqlite.queue.values import BodyCodec

RecipientKey = tuple[str, int]


async def leased_with(conn: Connection, address: str) -> int:
    """Recipients leased right now in messages the address is a recipient of."""
    return int(
        await conn.fetchval(
            "SELECT count(*) FROM recipients r WHERE r.state='leased' AND r.queue_id IN "
            "(SELECT queue_id FROM recipients WHERE lower(address)=$1)",
            address,
        )
    )


async def find_in_queue(
    conn: Connection, addr: str, pat: re.Pattern[str], codec: BodyCodec
) -> tuple[list[RecipientKey], list[str], set[str]]:
    """(recipient rows naming or quoting it, messages it sent, queue ids whose content
    mentions it) — read-only."""
    recipients = [
        (str(r[0]), int(r[1]))
        for r in await conn.fetch(
            "SELECT queue_id, idx FROM recipients WHERE lower(address)=$1 "
            "OR strpos(lower(last_reply), $1) > 0",
            addr,
        )
    ]
    messages = [
        str(r[0])
        for r in await conn.fetch(
            "SELECT id FROM messages WHERE lower(sender)=$1 OR lower(coalesce(\"user\",''))=$1 "
            "OR strpos(lower(message_id), $1) > 0",
            addr,
        )
    ]
    needle = addr.encode()
    bpat = re.compile(pat.pattern.encode(), re.IGNORECASE)
    mentioned: set[str] = set()
    for sql in (
        "SELECT id, body FROM messages WHERE body IS NOT NULL",
        "SELECT queue_id, body FROM recipients WHERE body IS NOT NULL",
    ):
        async for qid, body in conn.cursor(sql, prefetch=200):
            if qid not in mentioned:
                data = codec.decode(bytes(body))
                if needle in data.lower() and bpat.search(data):
                    mentioned.add(str(qid))
    mentioned.update(
        str(r[0])
        for r in await conn.fetch(
            "SELECT DISTINCT m.id FROM messages m LEFT JOIN recipients r ON r.queue_id=m.id "
            "WHERE (lower(m.sender)=$1 OR lower(r.address)=$1) "
            "AND (m.body IS NOT NULL OR r.body IS NOT NULL)",
            addr,
        )
    )
    return recipients, messages, mentioned


async def _drop_body_if_done(conn: Connection, queue_id: str) -> None:
    await conn.execute(
        "UPDATE messages SET body=NULL WHERE id=$1 AND NOT EXISTS (SELECT 1 FROM recipients "
        f"WHERE queue_id=$1 AND state NOT IN {FINAL_STATES_SQL})",
        queue_id,
    )


async def erase_cancel_message(conn: Connection, qid: str, now: float) -> tuple[int, int]:
    """Drop a message's content; its pending recipients become final. (bodies, cancelled)"""
    had = await conn.fetchval(
        "SELECT coalesce((SELECT body IS NOT NULL FROM messages WHERE id=$1), false) OR "
        "EXISTS (SELECT 1 FROM recipients WHERE queue_id=$1 AND body IS NOT NULL)",
        qid,
    )
    await conn.execute("UPDATE messages SET body=NULL WHERE id=$1", qid)
    await conn.execute("UPDATE recipients SET body=NULL WHERE queue_id=$1", qid)
    status = await conn.execute(
        "UPDATE recipients SET state='suppressed', last_reply=$1, updated_at=$2, "
        f"lease_node=NULL WHERE queue_id=$3 AND state NOT IN {FINAL_STATES_SQL}",
        "cancelled: message erased on a privacy request", now, qid,
    )  # fmt: skip
    return int(bool(had)), int(status.split()[-1])


async def erase_recipient(
    conn: Connection, key: RecipientKey, red: Redaction, now: float
) -> tuple[int, int]:
    """Anonymize one recipient row (its own address, or a reply quoting it). (own, cancelled)"""
    qid, idx = key
    row = await conn.fetchrow(
        "SELECT address, state, last_reply FROM recipients WHERE queue_id=$1 AND idx=$2",
        qid, idx,
    )  # fmt: skip
    if row is None:
        return 0, 0
    address, state, last_reply = row
    own = str(address).lower() == red.address
    cancelled = 0
    if own and state not in FINAL_STATES:
        await conn.execute(
            "UPDATE recipients SET state='suppressed', body=NULL, updated_at=$1, "
            "lease_node=NULL WHERE queue_id=$2 AND idx=$3",
            now, qid, idx,
        )  # fmt: skip
        last_reply = "cancelled: erased on a privacy request"
        cancelled = 1
        await _drop_body_if_done(conn, qid)
    if own:
        await conn.execute(
            "UPDATE recipients SET address=$1, domain='erased.invalid', last_reply=$2, "
            "body=NULL WHERE queue_id=$3 AND idx=$4",
            red.token, red.sub(last_reply), qid, idx,
        )  # fmt: skip
    else:  # another recipient whose last reply quoted the address
        await conn.execute(
            "UPDATE recipients SET last_reply=$1 WHERE queue_id=$2 AND idx=$3",
            red.sub(last_reply), qid, idx,
        )  # fmt: skip
    return int(own), cancelled


async def erase_message_fields(conn: Connection, qid: str, red: Redaction) -> int:
    """Anonymize the sender, user and Message-ID of a message; 1 if it exists."""
    row = await conn.fetchrow('SELECT sender, "user", message_id FROM messages WHERE id=$1', qid)
    if row is None:
        return 0
    sender, user, message_id = row
    await conn.execute(
        'UPDATE messages SET sender=$1, "user"=$2, message_id=$3 WHERE id=$4',
        red.token if sender.lower() == red.address else red.sub(sender),
        red.token if (user or "").lower() == red.address else red.sub(user),
        red.sub(message_id), qid,
    )  # fmt: skip
    return 1
