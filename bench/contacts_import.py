"""Contact import rate: ``ContactStore.import_stream`` against raw ``executemany``.

Run: ``.venv/bin/python -m bench.contacts_import [--n 100000]``

A CSV of ``n`` contacts (email, name, plan, city, signup) is imported three ways, each
into a fresh database file (WAL, ``synchronous=FULL``, as the daemon runs it):

- baseline: the rows pre-built in memory, one ``executemany`` of a plain INSERT into
  ``contacts`` in one transaction — the cheapest way to put them in that table;
- import: the whole path of ``POST /v1/contacts/import`` and ``mtaserver contacts import``
  minus the socket — the bytes in 64 KiB chunks, incremental CSV parsing and validation,
  the upsert with attribute merge, 1,000-row chunks through the group-committed writer;
- re-import: the same file again into the filled table (every row an update and a merge);
- HTTP: ``POST /v1/contacts/import`` to a real daemon (``mtaserver serve`` in a child
  process, a fresh data directory), the body streamed from this process in 64 KiB chunks;
  the daemon's peak RSS is printed (``--no-http`` skips it).

The figures are contacts per second and the ratio to the baseline; the issue's target is
≥ 20,000 contacts/s for the import.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from mtaserver.auth import hash_password
from mtaserver.contacts import ImportParser
from mtaserver.storage.sqlite.contacts import ContactStore
from mtaserver.storage.sqlite.db import Database, configure
from mtaserver.storage.sqlite.users import UserStore
from tests.support.daemon import Daemon, TestConfig, free_port

OWNER = "bench"
CITIES = ["Oslo", "Lyon", "Porto", "Graz", "Turku"]


def make_csv(n: int) -> bytes:
    lines = ["email,name,plan,city,signup"]
    lines += [
        f"user{i}@example{i % 97}.test,User {i},{'pro' if i % 3 == 0 else 'free'},"
        f"{CITIES[i % 5]},2026-{1 + i % 12:02d}-{1 + i % 28:02d}"
        for i in range(n)
    ]
    return ("\n".join(lines) + "\n").encode()


async def _fresh(path: Path) -> Database:
    db = Database(path)
    await db.open()
    await UserStore(db).add(OWNER, hash_password("bench password", n=2**10), ["example.test"])
    return db


async def _chunks(data: bytes, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def baseline(path: Path, data: bytes) -> float:
    db = await _fresh(path)
    await db.close()
    rows = []
    now = time.time()
    for line in data.decode().splitlines()[1:]:
        email, name, plan, city, signup = line.split(",")
        attrs = f'{{"name":"{name}","plan":"{plan}","city":"{city}","signup":"{signup}"}}'
        rows.append((OWNER, email, attrs, now, now))
    conn = sqlite3.connect(path, isolation_level=None)
    configure(conn)
    t0 = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(
        "INSERT INTO contacts (owner, address, attributes, created_at, updated_at) "
        "VALUES (?,?,?,?,?)",
        rows,
    )
    conn.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    conn.close()
    return len(rows) / elapsed


async def ours(path: Path, data: bytes, n: int) -> tuple[float, float]:
    db = await _fresh(path)
    try:
        store = ContactStore(db)
        rates = []
        for expect_created in (n, 0):
            t0 = time.perf_counter()
            result = await store.import_stream(OWNER, _chunks(data), ImportParser("csv"))
            rates.append(result.rows / (time.perf_counter() - t0))
            assert result.failed == 0 and result.created == expect_created, result
        return rates[0], rates[1]
    finally:
        await db.close()


def _kb(pid: int, field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) if m else 0


async def over_http(tmp: Path, data: bytes, n: int) -> tuple[float, int, int]:
    """Rows/s through a real daemon's API; its RSS before and at peak (kB)."""
    cfg = TestConfig(tmp, tls=False)
    cfg.set("api", listen=f"127.0.0.1:{free_port()}")
    daemon = Daemon(cfg)
    await asyncio.to_thread(daemon.start)
    try:
        out = await asyncio.to_thread(daemon.cli, "user", "add", OWNER, "--domain",
                                      "example.test", "--password-stdin",
                                      input=b"bench password\n")  # fmt: skip
        assert out.returncode == 0, out.stderr
        out = await asyncio.to_thread(daemon.cli, "apikey", "create", "--user", OWNER,
                                      "--scopes", "contacts.write")  # fmt: skip
        assert out.returncode == 0, out.stderr
        key = out.stdout.strip()
        assert daemon.proc is not None
        pid = daemon.proc.pid
        before = _kb(pid, "VmRSS")
        host, port = cfg.address("api", "listen")
        async with aiohttp.ClientSession() as s:
            t0 = time.perf_counter()
            async with s.post(f"http://{host}:{port}/v1/contacts/import", data=_chunks(data),
                              headers={"Authorization": f"Bearer {key}",
                                       "Content-Type": "text/csv"}) as r:  # fmt: skip
                body = await r.json()
            elapsed = time.perf_counter() - t0
        assert r.status == 200 and body["created"] == n, body
        return n / elapsed, before, _kb(pid, "VmHWM")
    finally:
        await asyncio.to_thread(daemon.stop)


async def run(n: int, http: bool = True) -> dict[str, float]:
    data = make_csv(n)
    with tempfile.TemporaryDirectory(prefix="bench-contacts-") as tmp:
        base = await baseline(Path(tmp) / "base.db", data)
        first, again = await ours(Path(tmp) / "ours.db", data, n)
        rows = {
            "raw executemany (baseline)": base,
            "import (parse+upsert+commit)": first,
            "re-import (all updates)": again,
        }
        if http:
            rate, before, peak = await over_http(Path(tmp), data, n)
            rows["HTTP import to a daemon"] = rate
            print(f"daemon RSS: {before / 1024:.1f} MiB before the HTTP import, "
                  f"peak {peak / 1024:.1f} MiB ({len(data) / 2**20:.1f} MiB body)")  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=100_000, help="contacts in the file")
    ap.add_argument("--no-http", action="store_true", help="skip the run through a daemon")
    args = ap.parse_args(argv)
    rows = asyncio.run(run(args.n, not args.no_http))
    base = rows["raw executemany (baseline)"]
    print(f"contacts import: {args.n} CSV rows, 4 attributes each; synchronous=FULL")
    print(f"{'':<30} {'contacts/s':>11} {'vs baseline':>12}")
    for name, rate in rows.items():
        print(f"{name:<30} {rate:>11.0f} {rate / base:>11.2f}x")
    goal = rows["import (parse+upsert+commit)"]
    print(f"goal: import >= 20,000 contacts/s: {'met' if goal >= 20_000 else 'NOT met'}")
    return rows


if __name__ == "__main__":
    main()
