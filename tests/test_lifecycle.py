"""The daemon as a real process: READY/RELOADING/STOPPING, SIGHUP reload, SIGTERM drain,
crash recovery.

Each daemon test also runs with ``[server] workers = 2`` (the listeners in two worker
processes): what holds for one process holds for the daemon as a whole."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mtaserver.model import PreparedMessage, PreparedRecipient
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.queue import Spool
from tests.support.daemon import Daemon, TestConfig

STATES = {"READY=1", "RELOADING=1", "STOPPING=1"}


@pytest.mark.sqlite_only("reads the SQLite file's clean-shutdown flag")
@pytest.mark.parametrize("workers", [1, 2])
def test_ready_reload_and_clean_stop(tmp_path: Path, workers: int) -> None:
    cfg = TestConfig(tmp_path)
    cfg.set("server", workers=workers)
    d = Daemon(cfg).start()
    try:
        assert any("STATUS=accepting mail" in n for n in d.notifications)
        # A good new config is taken.
        cfg.set("server", log_level="info")
        cfg.write()
        d.reload()
        assert "event=reloaded" in d.log()
        # A bad new config is logged and the old one kept; the daemon keeps running.
        cfg.path.write_text('[shaping."gmail.com"]\nmax_rate = "100 per min"\n')
        d.reload()
        assert "event=reload_rejected" in d.log()
        assert 'shaping.\\"gmail.com\\".max_rate' in d.log() or "max_rate" in d.log()
        assert d.proc is not None and d.proc.poll() is None
        # every worker took the good file before the daemon said READY=1; none the bad one
        log = d.log()
        assert log.count("event=worker_reloaded") == (workers if workers > 1 else 0), log
        if workers > 1:
            assert log.rindex("event=worker_reloaded") < log.index("event=reloaded")
    finally:
        code = d.stop()
    assert code == 0, d.log()
    states = [x for n in d.notifications for x in n.split("\n") if x in STATES]
    assert states == ["READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "READY=1", "STOPPING=1"]
    assert "event=stopped" in d.log()
    conn = sqlite3.connect(cfg.database)
    assert conn.execute("SELECT value FROM meta WHERE key='clean_shutdown'").fetchone() == ("1",)


@pytest.mark.sqlite_only(
    "SQLite's unclean-stop check (PostgreSQL lease takeover: test_pg_queue, test_pg_cluster)"
)
@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.pg_pending("workers"))])
def test_crash_is_detected_and_leases_come_back(tmp_path: Path, workers: int) -> None:
    import asyncio

    cfg = TestConfig(tmp_path, tls=False)
    cfg.set("server", workers=workers)
    # the released recipient's MX lookup (nobody answers) is in flight at the stop: 1 s
    cfg.set("delivery", dns_timeout="1s")
    d = Daemon(cfg).start()
    d.kill()

    async def lease_one() -> None:
        db = Database(cfg.database)
        await db.open()
        spool = Spool(db)
        await spool.enqueue(
            PreparedMessage(
                queue_id="Q1",
                sender="a@example.com",
                recipients=(PreparedRecipient("b@example.net"),),
                data=b"x\r\n",
                user=None,
                client_ip="127.0.0.1",
                received_at=1.0,
            )
        )
        assert len(await spool.claim_due(now=2.0, limit=10, lease_seconds=3600)) == 1
        # Leave without closing cleanly, as a crashed process would.
        await db.write(lambda c: c.execute("UPDATE meta SET value='0' WHERE key='clean_shutdown'"))
        await db._close_connections()

    asyncio.run(lease_one())
    with Daemon(cfg) as d2:
        log = d2.log()
        assert "event=unclean_stop_detected quick_check=ok" in log
        assert "event=leases_released_at_start recipients=1" in log


async def test_migrations_from_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.write_bytes(b"")
    db = Database(path)
    await db.open()
    tables = await db.read(
        lambda c: {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    )
    await db.close()
    assert {"messages", "recipients", "events", "meta", "schema_migrations"} <= tables


@pytest.mark.sqlite_only("the SQLite lock file and clean-shutdown flag")
def test_tools_beside_the_daemon_and_a_second_daemon(tmp_path: Path) -> None:
    cfg = TestConfig(tmp_path, tls=False)
    with Daemon(cfg) as d:
        out = d.cli("queue", "list")
        assert out.returncode == 0, out.stderr
        assert "unclean" not in out.stderr
        # A CLI tool closing the database must not mark the daemon's run as cleanly stopped.
        conn = sqlite3.connect(cfg.database)
        row = conn.execute("SELECT value FROM meta WHERE key='clean_shutdown'").fetchone()
        conn.close()
        assert row == ("0",)
        second = Daemon(cfg, ready_timeout=10)
        try:
            second.start()
            raise AssertionError("a second daemon on the same database started")
        except RuntimeError as exc:
            assert "another mtaserver is already running" in str(exc)
        finally:
            second._finish() if second.proc else None
    assert (tmp_path / "data" / "mtaserver.db").stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.pg_pending("workers"))])
def test_sigterm_lets_a_transaction_in_progress_finish(tmp_path: Path, workers: int) -> None:
    import signal
    import socket

    cfg = TestConfig(tmp_path, tls=False)
    cfg.set("server", drain_timeout="20s", workers=workers)
    d = Daemon(cfg).start()
    host, port = cfg.address("submission", "listen_plain")
    sock = socket.create_connection((host, port), timeout=10)
    f = sock.makefile("rb")

    def cmd(line: bytes) -> bytes:
        if line:
            sock.sendall(line + b"\r\n")
        reply = f.readline()
        while reply[3:4] == b"-":
            reply = f.readline()
        return reply

    try:
        assert cmd(b"").startswith(b"220")
        assert cmd(b"EHLO client.test").startswith(b"250")
        assert cmd(b"MAIL FROM:<app@example.com>").startswith(b"250")
        assert cmd(b"RCPT TO:<someone@example.net>").startswith(b"250")
        assert cmd(b"DATA").startswith(b"354")
        sock.sendall(b"From: app@example.com\r\nSubject: in flight\r\n\r\nfirst half\r\n")
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        d.wait_for("STOPPING=1")
        # No new sessions once draining has begun.
        try:
            with socket.create_connection((host, port), timeout=5) as late:
                heard = late.makefile("rb").read()  # until the server closes it
        except ConnectionError:  # refused, or reset from a closed listener's backlog
            heard = b""
        if workers > 1 and heard.startswith(b"220"):
            # The workers hear SIGTERM from the owner just after STOPPING=1: one may take a
            # connection in that instant, and then ends it at once (421), unserved.
            assert heard.rstrip(b"\r\n").split(b"\r\n")[-1].startswith(b"421"), heard
        else:
            assert not heard.startswith(b"220"), heard
        reply = cmd(b"second half\r\n.")
        assert reply.startswith(b"250"), reply
        queue_id = reply.split()[-1].decode()
    finally:
        sock.close()
    assert d.stop() == 0, d.log()
    rows = cfg.query("SELECT body FROM messages WHERE id=?", queue_id)
    assert rows and b"second half" in rows[0][0]
