"""Privacy requests about one address: ``export`` everything held, ``erase`` it.

``erase`` removes or anonymizes every trace of the address in the database:

- its recipient rows: address → an opaque token (``erased-<random>@erased.invalid``, one per
  erase, so per-recipient statistics still add up), domain → ``erased.invalid``, replies
  scrubbed; a recipient still queued is cancelled (final state ``suppressed``);
- queued messages whose body mentions it (To/Cc headers, per-recipient copies) or that it
  sent: the bodies go and their other pending recipients are cancelled too — content cannot
  be rewritten without breaking DKIM;
- events: the recipient column, and the address wherever it appears inside the JSON data;
  the user agent and client IP of its opens and clicks are dropped;
- the sender/user columns of messages it sent; its soft-bounce counter;
- any other table (tracking, future ones) whose text columns mention it;
- its suppression entries are kept as SHA-256 hashes (``suppression.hash_entries``), so mail
  to it stays suppressed while the address itself is gone.

The user account table is left alone (``mtaserver user remove`` deletes an account); the
result says when one exists. Matching is case-insensitive and bounded: erasing
``bob@example.com`` does not touch ``jimbob@example.com``.

Work is found on the read connection and applied in batches of ``BATCH`` rows per write, so
a long history never holds the writer for long; a last pass catches rows written meanwhile.
The writer runs with ``secure_delete`` (db.configure), so deleted content is overwritten in
the file; after the erase the WAL is checkpointed and truncated so old page images go too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from mtaserver.clock import Clock, SystemClock
from mtaserver.errors import MtaError, StorageError
from mtaserver.model import FINAL_STATES, FINAL_STATES_SQL
from mtaserver.storage.sqlite import suppressions as suppression
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.queue import BodyCodec, IdentityCodec, drop_body_if_done
from mtaserver.suppression import address_hash

BATCH = 500
_PERSONAL_KEYS = ("user_agent", "client_ip", "proxy", "ip")  # of the erased person's own hits
# Tables handled explicitly, or that never hold addresses of mail recipients.
_SKIP_TABLES = {
    "messages", "recipients", "events", "suppressions", "soft_bounces", "users",
    "user_domains", "meta", "schema_migrations", "webhook_outbox", "webhook_endpoints",
    "sqlite_sequence",
}  # fmt: skip


class PrivacyError(MtaError):
    """The request cannot be carried out as asked (e.g. not an address)."""


def normalize(address: str) -> str:
    addr = address.strip().strip("<>").strip().lower()
    local, _, domain = addr.rpartition("@")
    if not local or not domain or any(c.isspace() for c in addr) or "." not in domain:
        raise PrivacyError(f"not an email address: {address!r}")
    return addr


def _pattern(addr: str) -> re.Pattern[str]:
    """The address as a whole word: not inside a longer local part or domain."""
    return re.compile(
        r"(?<![A-Za-z0-9._%+\-=/])" + re.escape(addr) + r"(?![A-Za-z0-9\-]|\.[A-Za-z0-9])",
        re.IGNORECASE,
    )


@dataclass
class EraseResult:
    address_token: str
    recipients: int = 0
    cancelled: int = 0  # recipients (of any address) whose delivery was cancelled
    bodies_removed: int = 0  # messages whose queued/kept content was removed
    messages: int = 0  # messages whose sender/user fields were anonymized
    events: int = 0
    suppressions_hashed: int = 0
    soft_bounces: int = 0
    other: dict[str, int] = field(default_factory=dict)  # table → rows scrubbed
    user_account: bool = False  # a submission user of that name exists (not touched)
    checkpointed: bool = False
    in_flight: int = 0  # deliveries still leased when erasing: run the erase again later

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Found:
    recipients: list[int] = field(default_factory=list)  # rowids
    messages: list[str] = field(default_factory=list)  # sender/user/message_id mention it
    bodies: list[str] = field(default_factory=list)  # queue ids whose content mentions it
    events: list[int] = field(default_factory=list)
    other: dict[str, list[int]] = field(default_factory=dict)

    def empty(self) -> bool:
        return not (self.recipients or self.messages or self.bodies or self.events or self.other)


def _text_columns(conn: sqlite3.Connection) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for (table,) in conn.execute(
        "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
    ).fetchall():
        if table in _SKIP_TABLES:
            continue
        cols = [
            r[1]
            for r in conn.execute(f'PRAGMA table_info("{table}")')
            if (r[2] or "").upper() in ("TEXT", "") or "CHAR" in (r[2] or "").upper()
        ]
        if cols:
            out[table] = cols
    return out


def _find(conn: sqlite3.Connection, addr: str, pat: re.Pattern[str], codec: BodyCodec) -> _Found:
    """Read-only search (on the reader: no write lock however big the tables are)."""
    f = _Found()
    f.recipients = [
        r[0]
        for r in conn.execute(
            "SELECT rowid FROM recipients WHERE lower(address)=? OR instr(lower(last_reply), ?)",
            (addr, addr),
        )
    ]
    f.messages = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM messages WHERE lower(sender)=? OR lower(coalesce(user,''))=? "
            "OR instr(lower(message_id), ?)",
            (addr, addr, addr),
        )
    ]
    needle = addr.encode()
    bpat = re.compile(pat.pattern.encode(), re.IGNORECASE)
    mentioned: set[str] = set()
    for qid, body in conn.execute("SELECT id, body FROM messages WHERE body IS NOT NULL"):
        data = codec.decode(body)
        if needle in data.lower() and bpat.search(data):
            mentioned.add(qid)
    for qid, body in conn.execute("SELECT queue_id, body FROM recipients WHERE body IS NOT NULL"):
        if qid not in mentioned:
            data = codec.decode(body)
            if needle in data.lower() and bpat.search(data):
                mentioned.add(qid)
    # Messages it sent or is a recipient of, still holding content, go as a whole.
    mentioned.update(
        r[0]
        for r in conn.execute(
            "SELECT DISTINCT m.id FROM messages m LEFT JOIN recipients r ON r.queue_id=m.id "
            "WHERE (lower(m.sender)=? OR lower(r.address)=?) "
            "AND (m.body IS NOT NULL OR r.body IS NOT NULL)",
            (addr, addr),
        )
    )
    f.bodies = sorted(mentioned)
    f.events = [
        r[0]
        for r in conn.execute(
            "SELECT id, recipient, data FROM events WHERE lower(recipient)=? "
            "OR instr(lower(data), ?)",
            (addr, addr),
        )
        if (r[1] or "").lower() == addr or pat.search(r[2] or "")
    ]
    for table, cols in _text_columns(conn).items():
        where = " OR ".join(f'instr(lower("{c}"), ?)' for c in cols)
        rows = conn.execute(
            f'SELECT rowid FROM "{table}" WHERE {where}', (addr,) * len(cols)
        ).fetchall()
        if rows:
            f.other[table] = [r[0] for r in rows]
    return f


def _scrub(value: Any, pat: re.Pattern[str], token: str) -> Any:
    if isinstance(value, str):
        return pat.sub(token, value)
    if isinstance(value, list):
        return [_scrub(v, pat, token) for v in value]
    if isinstance(value, dict):
        return {k: _scrub(v, pat, token) for k, v in value.items()}
    return value


def _chunks(items: list[Any], n: int = BATCH) -> Iterable[list[Any]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


class _Eraser:
    def __init__(self, addr: str, token: str, now: float) -> None:
        self.addr = addr
        self.token = token
        self.now = now
        self.pat = _pattern(addr)

    def sub(self, text: str | None) -> str | None:
        return None if text is None else self.pat.sub(self.token, text)

    def cancel_message(self, conn: sqlite3.Connection, qid: str) -> tuple[int, int]:
        """Drop a message's content; its pending recipients become final. (bodies, cancelled)"""
        had = conn.execute(
            "SELECT (SELECT body IS NOT NULL FROM messages WHERE id=?) OR EXISTS "
            "(SELECT 1 FROM recipients WHERE queue_id=? AND body IS NOT NULL)",
            (qid, qid),
        ).fetchone()[0]
        conn.execute("UPDATE messages SET body=NULL WHERE id=?", (qid,))
        conn.execute("UPDATE recipients SET body=NULL WHERE queue_id=?", (qid,))
        cancelled = conn.execute(
            "UPDATE recipients SET state='suppressed', last_reply=?, updated_at=? "
            f"WHERE queue_id=? AND state NOT IN {FINAL_STATES_SQL}",
            ("cancelled: message erased on a privacy request", self.now, qid),
        ).rowcount
        return int(bool(had)), cancelled

    def recipients(self, conn: sqlite3.Connection, rowids: list[int], r: EraseResult) -> None:
        for rowid in rowids:
            row = conn.execute(
                "SELECT queue_id, address, state, last_reply FROM recipients WHERE rowid=?",
                (rowid,),
            ).fetchone()
            if row is None:
                continue
            qid, address, state, last_reply = row
            own = address.lower() == self.addr
            if own and state not in FINAL_STATES:
                conn.execute(
                    "UPDATE recipients SET state='suppressed', body=NULL, updated_at=? "
                    "WHERE rowid=?",
                    (self.now, rowid),
                )
                last_reply = "cancelled: erased on a privacy request"
                r.cancelled += 1
                drop_body_if_done(conn, qid)
            if own:
                conn.execute(
                    "UPDATE recipients SET address=?, domain='erased.invalid', last_reply=?, "
                    "body=NULL WHERE rowid=?",
                    (self.token, self.sub(last_reply), rowid),
                )
            else:  # another recipient whose last reply quoted the address
                conn.execute(
                    "UPDATE recipients SET last_reply=? WHERE rowid=?",
                    (self.sub(last_reply), rowid),
                )
            r.recipients += int(own)

    def messages(self, conn: sqlite3.Connection, ids: list[str], r: EraseResult) -> None:
        for qid in ids:
            row = conn.execute(
                "SELECT sender, user, message_id FROM messages WHERE id=?", (qid,)
            ).fetchone()
            if row is None:
                continue
            sender, user, message_id = row
            conn.execute(
                "UPDATE messages SET sender=?, user=?, message_id=? WHERE id=?",
                (
                    self.token if sender.lower() == self.addr else self.sub(sender),
                    self.token if (user or "").lower() == self.addr else self.sub(user),
                    self.sub(message_id),
                    qid,
                ),
            )
            r.messages += 1

    def events(self, conn: sqlite3.Connection, ids: list[int], r: EraseResult) -> None:
        for event_id in ids:
            row = conn.execute(
                "SELECT recipient, data FROM events WHERE id=?", (event_id,)
            ).fetchone()
            if row is None:
                continue
            recipient, data = row
            own = (recipient or "").lower() == self.addr
            try:
                payload = json.loads(data) if data else {}
            except ValueError:
                payload = None
            if isinstance(payload, dict):
                if own:
                    for key in _PERSONAL_KEYS:
                        payload.pop(key, None)
                new_data = json.dumps(_scrub(payload, self.pat, self.token))
            else:
                new_data = self.sub(data) or "{}"
            conn.execute(
                "UPDATE events SET recipient=?, data=? WHERE id=?",
                (self.token if own else self.sub(recipient), new_data, event_id),
            )
            r.events += 1

    def other(self, conn: sqlite3.Connection, table: str, rowids: list[int]) -> int:
        cols = _text_columns(conn).get(table, [])
        done = 0
        for rowid in rowids:
            names = ", ".join(f'"{c}"' for c in cols)
            row = conn.execute(f'SELECT {names} FROM "{table}" WHERE rowid=?', (rowid,)).fetchone()
            if row is None:
                continue
            sets = ", ".join(f'"{c}"=?' for c in cols)
            values = [self.sub(v) if isinstance(v, str) else v for v in row]
            conn.execute(f'UPDATE "{table}" SET {sets} WHERE rowid=?', (*values, rowid))
            done += 1
        return done


async def erase(
    db: Database,
    address: str,
    *,
    codec: BodyCodec | None = None,
    suppress: bool = False,
    now: float | None = None,
    wait_leased: float = 30.0,
    clock: Clock | None = None,
) -> EraseResult:
    """Remove or anonymize every trace of ``address``; keep its suppressions as hashes.

    ``suppress`` also adds a global (hashed) suppression when there is none, so mail to the
    address is refused from now on. Safe while the daemon runs; idempotent. A delivery to the
    address in flight (leased) is waited for up to ``wait_leased`` seconds, since its result
    would otherwise be recorded after the erase; ``in_flight`` counts those still leased.
    """
    addr = normalize(address)
    clock = clock or SystemClock()
    t = clock.now() if now is None else now
    codec = codec or IdentityCodec()
    token = f"erased-{secrets.token_hex(6)}@erased.invalid"
    eraser = _Eraser(addr, token, t)
    result = EraseResult(address_token=token)
    result.in_flight = await _wait_for_leases(db, addr, wait_leased, clock)
    for _ in range(5):  # a last pass catches rows written while the previous one ran
        found = await db.read(lambda c: _find(c, addr, eraser.pat, codec))
        if found.empty():
            break
        for chunk in _chunks(found.bodies, 100):

            def cancel(conn: sqlite3.Connection, chunk: list[str] = chunk) -> None:
                for qid in chunk:
                    removed, cancelled = eraser.cancel_message(conn, qid)
                    result.bodies_removed += removed
                    result.cancelled += cancelled

            await db.write(cancel)
        await _apply(db, found.recipients, lambda c, ids: eraser.recipients(c, ids, result))
        await _apply(db, found.messages, lambda c, ids: eraser.messages(c, ids, result))
        await _apply(db, found.events, lambda c, ids: eraser.events(c, ids, result))
        for table, rowids in found.other.items():
            for chunk in _chunks(rowids):

                def scrub(conn: sqlite3.Connection, tb: str = table, ids: list[int] = chunk) -> int:
                    return eraser.other(conn, tb, ids)

                n = await db.write(scrub)
                result.other[table] = result.other.get(table, 0) + n

    def tail(conn: sqlite3.Connection) -> None:
        result.suppressions_hashed = suppression.hash_entries(conn, addr)
        if suppress:
            suppression.add_hashed(conn, addr, "erased", t)
        result.soft_bounces = conn.execute(
            "DELETE FROM soft_bounces WHERE lower(address)=?", (addr,)
        ).rowcount
        result.user_account = (
            conn.execute("SELECT 1 FROM users WHERE lower(name)=?", (addr,)).fetchone() is not None
        )
        conn.execute(
            "INSERT INTO events(at, type, data) VALUES (?, 'erased', ?)",
            (t, json.dumps({"token": token, "recipients": result.recipients,
                            "events": result.events})),
        )  # fmt: skip

    await db.write(tail)
    result.checkpointed = await checkpoint(db)
    return result


async def _wait_for_leases(db: Database, addr: str, wait: float, clock: Clock) -> int:
    """Let deliveries in flight to the address finish; how many are still leased."""
    deadline = clock.monotonic() + wait
    while True:
        leased = await db.read(
            lambda c: c.execute(
                "SELECT count(*) FROM recipients r WHERE r.state='leased' AND r.queue_id IN "
                "(SELECT queue_id FROM recipients WHERE lower(address)=?)",
                (addr,),
            ).fetchone()[0]
        )
        if not leased or clock.monotonic() >= deadline:
            return int(leased)
        await clock.sleep(0.2)


async def _apply(
    db: Database, ids: list[Any], fn: Callable[[sqlite3.Connection, list[Any]], None]
) -> None:
    for chunk in _chunks(ids):

        def op(conn: sqlite3.Connection, chunk: list[Any] = chunk) -> None:
            fn(conn, chunk)

        await db.write(op)


async def checkpoint(db: Database) -> bool:
    """Copy the WAL into the file and truncate it, so old page images leave the disk.

    Runs on its own connection; False if a reader kept it from completing (it will on the
    next automatic checkpoint).
    """

    def run() -> bool:
        conn = sqlite3.connect(db.path, timeout=10)
        try:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            return int(busy) == 0
        finally:
            conn.close()

    try:
        return await asyncio.to_thread(run)
    except sqlite3.Error as exc:
        raise StorageError(f"checkpoint failed: {exc}") from exc


async def export(
    db: Database,
    address: str,
    *,
    codec: BodyCodec | None = None,
    bodies: bool = True,
    clock: Clock | None = None,
) -> dict[str, Any]:
    """Everything the database holds about ``address``, as JSON-ready data."""
    addr = normalize(address)
    generated_at = (clock or SystemClock()).now()
    codec = codec or IdentityCodec()
    pat = _pattern(addr)

    def fn(conn: sqlite3.Connection) -> dict[str, Any]:
        def rows(sql: str, args: tuple[Any, ...]) -> list[dict[str, Any]]:
            cur = conn.execute(sql, args)
            names = [d[0] for d in cur.description]
            return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]

        def text(blob: bytes | None) -> str | None:
            if blob is None or not bodies:
                return None
            with contextlib.suppress(StorageError):
                return codec.decode(blob).decode("utf-8", "replace")
            return "(encrypted with a key that is not configured)"

        received = rows(
            "SELECT r.queue_id, r.idx, r.address, r.state, r.attempts, r.last_reply, "
            "r.updated_at, m.sender, m.received_at, m.message_id, m.campaign, m.size, "
            "coalesce(r.body, m.body) AS body FROM recipients r JOIN messages m "
            "ON m.id = r.queue_id WHERE lower(r.address)=? ORDER BY m.received_at",
            (addr,),
        )
        for rec in received:
            rec["body"] = text(rec["body"])
        sent = rows(
            "SELECT id AS queue_id, sender, user, client_ip, received_at, size, message_id, "
            "campaign, (SELECT count(*) FROM recipients r WHERE r.queue_id = m.id) "
            "AS recipients, body FROM messages m WHERE lower(sender)=? OR lower(user)=? "
            "ORDER BY received_at",
            (addr, addr),
        )
        for msg in sent:
            msg["body"] = text(msg["body"])
        events = []
        for e in rows(
            "SELECT id, at, type, queue_id, recipient, data FROM events "
            "WHERE lower(recipient)=? OR instr(lower(data), ?) ORDER BY id",
            (addr, addr),
        ):
            if (e["recipient"] or "").lower() == addr or pat.search(e["data"] or ""):
                with contextlib.suppress(ValueError):
                    e["data"] = json.loads(e["data"])
                events.append(e)
        hashed = address_hash(addr)
        supp = rows(
            "SELECT scope, reason, source, created_at, expires_at, queue_id FROM suppressions "
            "WHERE address IN (?, ?)",
            (addr, hashed),
        )
        soft = rows(
            "SELECT at, category, queue_id FROM soft_bounces WHERE lower(address)=?", (addr,)
        )
        user = rows("SELECT name, created_at, updated_at FROM users WHERE lower(name)=?", (addr,))
        if user:
            user[0]["domains"] = [
                r[0]
                for r in conn.execute(
                    "SELECT domain FROM user_domains WHERE user=? ORDER BY domain",
                    (user[0]["name"],),
                )
            ]
        other: dict[str, list[dict[str, Any]]] = {}
        for table, cols in _text_columns(conn).items():
            where = " OR ".join(f'instr(lower("{c}"), ?)' for c in cols)
            found = rows(f'SELECT * FROM "{table}" WHERE {where}', (addr,) * len(cols))
            if found:
                other[table] = [
                    {k: (v.hex() if isinstance(v, bytes) else v) for k, v in r.items()}
                    for r in found
                ]
        return {
            "address": addr,
            "generated_at": generated_at,
            "received": received,
            "sent": sent,
            "events": events,
            "suppressions": supp,
            "soft_bounces": soft,
            "user_account": user[0] if user else None,
            "other": other,
        }

    return await db.read(fn)
