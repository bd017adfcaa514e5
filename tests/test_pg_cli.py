"""``mtaserver suppression`` and ``mtaserver stats`` on a PostgreSQL node: the cluster's data.

Until these commands took the backend's owners they refused a ``backend = "postgresql"``
config (the SQLite file is not the node's database). Here each runs as the operator runs
it, against a private PostgreSQL server: what one command writes the next reads, and an
entry a bounce made on "another node" (written through the PostgreSQL owner, as the
daemon does) is what ``suppression review`` finds and lifts.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mtaserver.config.storage import PostgresConfig
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.suppressions import PgSuppressionStore
from tests.pg import PgServer, migrated, pg_dsn, pg_server  # noqa: F401
from tests.support.daemon import ROOT, TestConfig


def _config(tmp_path: Path, pg: PgServer, dsn: str) -> Path:
    (tmp_path / "pgpass").write_text(pg.password + "\n")
    cfg = TestConfig(tmp_path, tls=False)
    cfg.set(
        "storage", backend="postgresql", dsn=dsn.replace(f":{pg.password}@", "@"),
        password_file=str(tmp_path / "pgpass"), tls="disable",
    )  # fmt: skip
    return cfg.write()


def _cli(config: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mtaserver", *argv, "-c", str(config)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )  # fmt: skip


def _ok(r: subprocess.CompletedProcess[str], code: int = 0) -> str:
    assert r.returncode == code, f"exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


async def test_suppression_and_stats_work_on_the_clusters_database(
    tmp_path: Path,
    pg_server: PgServer,  # noqa: F811
    pg_dsn: str,  # noqa: F811
) -> None:
    await migrated(pg_dsn)
    config = _config(tmp_path, pg_server, pg_dsn)
    # A bounce another node recorded: a spam verdict (policy now only counts those) and a
    # dead address (stays).
    bare = pg_dsn.replace(f":{pg_server.password}@", "@")
    db = PgDatabase(PostgresConfig(dsn=bare, password_file=tmp_path / "pgpass", tls="disable"))
    await db.open(migrate=False)
    try:
        store = PgSuppressionStore(db)
        await store.add("spam@b.test", "spamdetected", source="bounce", reply="550 5.7.1 spam")
        await store.add("dead@b.test", "userunknown", source="bounce", reply="550 5.1.1 no")
    finally:
        await db.close()

    _ok(_cli(config, "suppression", "add", "Hand@A.test", "--scope", "example.com"))
    listed = _ok(_cli(config, "suppression", "list")).splitlines()
    assert sorted(line.split("\t")[0] for line in listed) == [
        "dead@b.test", "hand@a.test", "spam@b.test",
    ]  # fmt: skip
    assert "hand@a.test\tscope=example.com\treason=manual" in "\n".join(listed)
    _ok(_cli(config, "suppression", "check", "hand@a.test", "--sender-domain", "example.com"), 1)
    # review: the spam verdict is listed (exit 1), lifted, and gone; the dead address stays
    out = _ok(_cli(config, "suppression", "review"), 1)
    assert out.startswith("review\tspam@b.test\t") and "dead@b.test" not in out, out
    lifted = _cli(config, "suppression", "review", "--lift")
    assert _ok(lifted).startswith("lifted\tspam@b.test\t")
    assert "lifted 1 of 2 entries" in lifted.stderr
    assert "removed 1 entry for hand@a.test" in _ok(
        _cli(config, "suppression", "remove", "hand@a.test")
    )
    left = _ok(_cli(config, "suppression", "list")).splitlines()
    assert [line.split("\t")[0] for line in left] == ["dead@b.test"]
    # stats: the cluster's reports (nothing accepted in this database yet)
    stats = json.loads(_ok(_cli(config, "stats", "--json", "--since", "24h")))
    assert stats["filter"]["campaign"] is None and stats["accepted"] == 0, stats
