"""Date rules on PostgreSQL read a text as SQLite's ``julianday()`` does, to the same float:
each text below (the ISO 8601 forms SQLite reads, its rollovers and limits, Julian day
numbers, ``now``, and what it refuses) goes through SQLite's own function and through the
SQL the PostgreSQL segment compiler emits, and every answer must be identical (NULL for
NULL). Then one segment over such attributes picks the same contacts on both backends."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import asyncpg

from mtaserver.config.storage import PostgresConfig
from mtaserver.contacts import ContactInput
from mtaserver.segments import JD_EPOCH, parse
from mtaserver.storage.postgres.contacts import PgContactStore
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.segments import PgSegmentStore, julianday_sql
from mtaserver.storage.postgres.users import PgUserStore
from mtaserver.storage.sqlite.contacts import ContactStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.segments import SegmentStore
from mtaserver.storage.sqlite.users import UserStore
from tests.pg import pg_dsn, pg_server  # noqa: F401
from tests.support.clock import FakeClock

DATE = "2026-06-01"
TEXTS = [
    # the forms: date, T or spaces, minutes, seconds, fractions, Z, offsets, spaces around
    DATE, f"{DATE}T", f"{DATE} ", f"{DATE}T10:00", f"{DATE} 10:00:00", f"{DATE}T10:00:00Z",
    f"{DATE}T10:00:00z ", f"{DATE}  T T 10:00", f"{DATE}\t\n10:00", f"{DATE} 10:00 +01:00",
    f"{DATE}T10:00:00.5", f"{DATE}T10:00:00.123456+14:59", f"{DATE}T10:00:00-00:00",
    f"{DATE}T10:00:00 Z", f"{DATE}T10:00:00.9995Z", f"{DATE}T10:00:59.9995",
    f"{DATE}T10:00:00.0285", f"{DATE}T10:00:00.1234567890123456789",
    f"{DATE}T10:00:00." + "0" * 400 + "1", f"{DATE}\v10:00\f",
    # SQLite's rollovers and ranges
    "2027-02-31", "2027-02-31 24:59", "2026-06-01T24:00", "2026-12-31T24:59:59.999",
    "0000-01-01", "-0001-01-01", "-4713-11-24 12:00", "-4713-11-24 11:59:59.999",
    "-4714-11-24", "9999-12-31 23:59:59.999", "9999-12-31 24:00", "2026-02-29", "2024-02-29",
    "1900-03-01", "1582-10-10", "0100-02-29",
    # refused
    "  2026-06-01", "2026-13-01", "2026-00-10", "2026-06-00", "2026-06-32", "2026-6-01",
    "+2026-06-01", "2026-06-01t10:00", "2026-06-01 10", "2026-06-01 1:00", "2026-06-01T10:00:5",
    "2026-06-01T10:00:00.", "2026-06-01 10:00:60", "2026-06-01 10:60", "2026-06-01 25:00",
    "2026-06-01T10:00:00+15:00", "2026-06-01T10:00:00+0100", "2026-06-01T10:00:00+01:60",
    "2026-06-01 +01:00", "2026-06-011", "2026-06-01\u200910:00", "\u00a02026-06-01", "",
    "pro", "x' OR '1'='1", "2026-06-01x",
    # Julian day numbers, as sqlite3AtoF reads them
    "12345", "2460000.5", " 12", "\t5\n", "\v5", "+5", ".5", "5.", "+.5", "5.e2", "1e3",
    "1.5E-3", "1e2", "00012", "0", "-0", "-0.0", "  -0  ", "-0e5", "5e-1", "1e-400",
    "1e-5000", "0e5000", "1e0005", "-1e-330", "0." + "0" * 400 + "1e400",
    "1" + "0" * 400 + "e-400", "5373484.4999", "5373484.49999999", "5373484.5", "-1",
    "1e400", "1e5000", "1e0400", "-1e-320", "0.0000000001", "5e", "5e+", ".e2", ".", "+",
    "e5", "0x10", "1_000", "\uff15", "5 x", "Infinity", "NaN",
    # now (the statement's time; the compiler's clock here)
    "now", "NOW", "Now", "  now  ", "nów",
]  # fmt: skip


def sqlite_days(texts: list[str]) -> list[float | None]:
    conn = sqlite3.connect(":memory:")
    try:
        return [conn.execute("SELECT julianday(?)", (t,)).fetchone()[0] for t in texts]
    finally:
        conn.close()


async def test_every_text_is_the_same_julian_day_on_both(pg_dsn: str) -> None:  # noqa: F811
    want = sqlite_days(TEXTS)
    now_ms = round(sqlite_days(["now"])[0] * 86400000)  # what SQLite read as now, in ms
    sql = julianday_sql("t.x", "$2::int8")
    conn = await asyncpg.connect(pg_dsn)
    try:
        rows = await conn.fetch(
            f"SELECT t.i, {sql} FROM unnest($1::text[]) WITH ORDINALITY AS t(x, i) ORDER BY t.i",
            TEXTS, now_ms,
        )  # fmt: skip
    finally:
        await conn.close()
    got = [r[1] for r in rows]
    wrong = [(t, w, g) for t, w, g in zip(TEXTS, want, got, strict=True) if w != g]
    # "now" is read on each side's own clock: it must only be the same to a few seconds
    if any(t.lower() == "now" for t, _, _ in wrong):
        assert all(abs(w - g) * 86400 < 5 for t, w, g in wrong if t.lower() == "now"), wrong
        wrong = [x for x in wrong if x[0].lower() != "now"]
    assert not wrong, wrong
    assert sum(w is not None for w in want) > 60 and None in want  # both kinds are covered


async def test_a_date_segment_picks_the_same_contacts_on_both(
    tmp_path: Path,
    pg_dsn: str,  # noqa: F811
) -> None:
    clock = FakeClock(1_800_000_000.0)  # 2027-01-15
    # ("now" is each side's own clock: SQLite's is the real one, so it is left out here)
    texts = [t for t in TEXTS if t.strip().lower() != "now"]
    rows = [ContactInput(f"c{i}@x.test", json.dumps({"d": t})) for i, t in enumerate(texts)]
    rows.append(ContactInput("num@x.test", '{"d": 2461192.5}'))  # a JSON number: not a date
    filters = [{"attr": "d", op: when} for op in ("lt", "gte") for when in (
        {"date": DATE}, {"date": "2026-06-01T10:00:00.5Z"}, {"days_ago": 36500},
        {"days_from_now": 1}, {"date": "0001-01-01"})]  # fmt: skip
    filters.append({"not": {"attr": "d", "gt": {"date": "1000-01-01"}}})
    db = Database(tmp_path / "mta.db")
    await db.open()
    pg = PgDatabase(PostgresConfig(dsn=pg_dsn, tls="disable", pool_size=2))
    await pg.open()
    try:
        await UserStore(db, clock).add("alice", "x", ["x.test"])
        await PgUserStore(pg, clock).add("alice", "x", ["x.test"])
        await ContactStore(db, clock).upsert_many("alice", rows)
        await PgContactStore(pg, clock).upsert_many("alice", rows)
        lite, post = SegmentStore(db, clock), PgSegmentStore(pg, clock)
        for obj in filters:
            flt = parse(obj)
            a = [x for _, x in await lite.page("alice", flt, None, limit=10_000)]
            b = [x for _, x in await post.page("alice", flt, None, limit=10_000)]
            assert a == b and 0 < len(a) < len(rows), (obj, sorted(set(a) ^ set(b)))
            assert await post.count("alice", flt) == len(b)
    finally:
        await pg.close()
        await db.close()
    assert sqlite_days(["1970-01-01"])[0] == JD_EPOCH
