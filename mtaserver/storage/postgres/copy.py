"""Copy a SQLite database's ported tables into PostgreSQL, and prove the copy.

``mtaserver storage migrate --to postgresql`` runs this with the daemon stopped. Each table
in :data:`TABLES` is streamed in chunks with PostgreSQL's COPY protocol into an empty
target (a non-empty one is refused: a second run must not double the queue), all in ONE
transaction, then verified before the commit: per table the row count and a checksum —
the sum of every row's SHA-256 modulo 2^256, so row order does not matter and each side
is hashed as it streams — computed on the SQLite rows and again on the rows read back
from PostgreSQL. Any difference rolls everything back.

This is a verbatim copy of the tables, not a write through their owners: the rows already
passed the owners' rules in SQLite, and the migrated schema has the same columns
(``tests/test_pg_schema.py``). Leased recipients arrive queued (no node holds them).
"""

from __future__ import annotations

import decimal
import hashlib
import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtaserver.errors import MtaError
from mtaserver.storage.postgres.db import Connection, PgDatabase

# Child tables after their parents (foreign keys).
TABLES: tuple[str, ...] = (
    "messages", "recipients", "batches", "events", "suppressions", "soft_bounces",
    "users", "user_domains", "api_keys", "idempotency", "templates", "template_versions",
    "admin_tokens", "webhook_endpoints", "webhook_outbox",
)  # fmt: skip
# Tables whose id comes from a sequence on PostgreSQL: moved past the copied ids.
SERIAL: tuple[str, ...] = ("events", "admin_tokens", "webhook_outbox")
# Contacts, lists, memberships and segments: before every table that names a contact.
TABLES += ("contacts", "lists", "list_members", "segments")
SERIAL += ("contacts", "lists", "segments")
# Campaigns after everything above (campaign_recipients names contacts); pending rows
# arrive unclaimed (lease_node and lease_until are PostgreSQL's own: NULL).
TABLES += ("campaigns", "campaign_runs", "campaign_recipients")
SERIAL += ("campaigns", "campaign_runs")
# Triggers, events and steps (they name contacts), opt-in, consent proofs; due steps arrive
# unclaimed. privacy_keys is seeded by its migration: SQLite's key replaces that one, so
# the proofs kept there are found again from an address.
TABLES += ("triggers", "contact_events", "journey_steps", "optin_settings", "optin_sent",
           "privacy_keys", "consent_proofs")  # fmt: skip
SERIAL += ("triggers", "contact_events", "journey_steps", "consent_proofs")
SEEDED: tuple[str, ...] = ("privacy_keys",)  # migration-written rows the copy replaces
_CHUNK = 5000
_MOD = 1 << 256


@dataclass(frozen=True, slots=True)
class TableCopy:
    table: str
    rows: int
    checksum: str  # hex, equal on both sides


def _canonical(value: Any, kind: str) -> bytes:
    if value is None:
        return b"\x00N"
    if kind == "double precision":
        return repr(float(value)).encode()
    if kind == "bigint":
        return str(int(value)).encode()
    if kind == "bytea":
        return bytes(value)
    if kind == "jsonb":  # PostgreSQL re-spells it (key order, spaces, 1e3 → 1000)
        return _json_canonical(str(value))
    return str(value).encode()


def _json_canonical(text: str) -> bytes:
    """The JSON value of ``text`` in one spelling: sorted keys, numbers as normalized
    decimals (so SQLite's text and PostgreSQL's jsonb of one value hash the same)."""

    def number(d: decimal.Decimal) -> dict[str, str]:
        return {"$n": str(d.normalize())}

    value = json.loads(text, parse_float=decimal.Decimal, parse_int=decimal.Decimal)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=number).encode()


class Checksum:
    """Order-independent: the sum of the rows' SHA-256 digests modulo 2^256."""

    def __init__(self, kinds: Sequence[str]) -> None:
        self.kinds = kinds
        self.total = 0
        self.rows = 0

    def add(self, row: Sequence[object]) -> None:
        h = hashlib.sha256()
        for value, kind in zip(row, self.kinds, strict=True):
            part = _canonical(value, kind)
            h.update(len(part).to_bytes(8, "big") + part)
        self.total = (self.total + int.from_bytes(h.digest(), "big")) % _MOD
        self.rows += 1

    def hex(self) -> str:
        return f"{self.total:064x}"


def _convert(value: Any, kind: str) -> object:
    """A SQLite value as PostgreSQL's column type wants it (SQLite keeps 1 for 1.0)."""
    if value is None:
        return None
    if kind == "double precision":
        return float(value)
    if kind == "bigint":
        return int(value)
    if kind == "bytea":
        return bytes(value)
    return str(value)


def _sqlite_rows(src: sqlite3.Connection, table: str, cols: Sequence[str]) -> Iterator[list[Any]]:
    quoted = ", ".join(f'"{c}"' for c in cols)
    cur = src.execute(f"SELECT {quoted} FROM {table}")
    while chunk := cur.fetchmany(_CHUNK):
        yield [list(r) for r in chunk]


async def _columns(conn: Connection, table: str) -> list[tuple[str, str]]:
    rows = await conn.fetch(
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = $1 ORDER BY ordinal_position",
        table,
    )
    return [(str(r[0]), str(r[1])) for r in rows]


async def copy_sqlite(source: Path, target: PgDatabase) -> list[TableCopy]:
    """Copy and verify every table of :data:`TABLES`; raises MtaError on any mismatch."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        done: list[TableCopy] = []
        async with target.transaction() as conn:
            for table in TABLES:
                done.append(await _copy_table(src, conn, table))
            for table in SERIAL:
                await conn.execute(
                    f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                    f"coalesce((SELECT max(id) FROM {table}), 0) + 1, false)"
                )
        return done
    finally:
        src.close()


async def _copy_table(src: sqlite3.Connection, conn: Connection, table: str) -> TableCopy:
    if table in SEEDED and src.execute(f"SELECT EXISTS (SELECT 1 FROM {table})").fetchone()[0]:
        await conn.execute(f"DELETE FROM {table}")
    if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):
        raise MtaError(
            f"postgresql: table {table} is not empty; migrate copies into a new database"
        )
    have = {r[1] for r in src.execute(f"PRAGMA table_info({table})")}
    target = [(c, k) for c, k in await _columns(conn, table) if c in have]
    cols = [c for c, _ in target]
    kinds = [k for _, k in target]
    state_at = cols.index("state") if table == "recipients" else -1
    source_sum = Checksum(kinds)
    for chunk in _sqlite_rows(src, table, cols):
        records = []
        for row in chunk:
            if state_at >= 0 and row[state_at] == "leased":
                row[state_at] = "queued"  # nobody holds it now; due at its lease expiry
            values = [_convert(v, k) for v, k in zip(row, kinds, strict=True)]
            source_sum.add(values)
            records.append(tuple(values))
        await conn.copy_records_to_table(table, records=records, columns=cols)
    copied_sum = Checksum(kinds)
    quoted = ", ".join(f'"{c}"' for c in cols)
    async for row in conn.cursor(f"SELECT {quoted} FROM {table}", prefetch=_CHUNK):
        copied_sum.add(list(row))
    if (source_sum.rows, source_sum.hex()) != (copied_sum.rows, copied_sum.hex()):
        raise MtaError(
            f"postgresql: {table}: copy differs (SQLite {source_sum.rows} rows "
            f"{source_sum.hex()[:16]}, PostgreSQL {copied_sum.rows} rows "
            f"{copied_sum.hex()[:16]}); nothing was committed"
        )
    return TableCopy(table, source_sum.rows, source_sum.hex())
