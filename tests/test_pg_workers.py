"""``[server] workers = 2`` on a PostgreSQL node: both workers accept, nothing is lost.

A real daemon (owner + two workers, each with its own small pool to PostgreSQL for users
and suppressions, ``mtaserver.workers.pgchild``) on a private PostgreSQL server, smtplib
clients on the plaintext listener, delivery to an aiosmtpd sink. The workers are forked by
the template (one parent, itself the owner's child), as on SQLite; each holds connections
to PostgreSQL and the template none (a pool is opened after the fork, never inherited).
Both workers are seen holding sessions (their sockets, read from /proc); a worker killed
with -9 mid-run is restarted, forked by the template again; every queue id a client got a
250 for reaches the sink once.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import smtplib
from pathlib import Path

from tests.pg import PgServer, migrated, pg_dsn, pg_server  # noqa: F401
from tests.support.daemon import Daemon, TestConfig
from tests.support.mxsink import SinkGroup, wait_for
from tests.test_workers import _QUEUED, Sender, _join, _message, _sink_ids, _worker_pids

HELD = 16  # sessions open at once: all on one of two workers by chance is 2 ** -15


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _established(pid: int, port: int, *, remote: bool = False) -> int:
    """TCP connections to local ``port`` (``remote``: to a server's ``port``) that process
    ``pid`` holds open (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    n = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            cols = line.split()
            local_port = int(cols[2 if remote else 1].split(":")[1], 16)
            if local_port == port and cols[3] == "01" and cols[9] in inodes:  # ESTABLISHED
                n += 1
    return n


def _config(tmp_path: Path, pg: PgServer, dsn: str, sink_port: int) -> TestConfig:
    (tmp_path / "pgpass").write_text(pg.password + "\n")
    cfg = TestConfig(tmp_path, tls=False)
    cfg.set("server", workers=2)
    cfg.set(
        "storage", backend="postgresql", dsn=dsn.replace(f":{pg.password}@", "@"),
        password_file=str(tmp_path / "pgpass"), tls="disable", pool_size=4,
    )  # fmt: skip
    cfg.set("delivery", relay_host=f"127.0.0.2:{sink_port}", tls="none")
    cfg.set("shaping", poll_interval="20ms")
    cfg.set("submission", max_connections_per_ip=200)
    return cfg


def _held_sessions(port: int, pids: list[int]) -> tuple[list[int], list[str]]:
    """Open HELD sessions, count each worker's, then send one message on each."""
    clients = []
    queued: list[str] = []
    try:
        for _ in range(HELD):
            c = smtplib.SMTP("127.0.0.1", port, timeout=30)
            c.ehlo()
            clients.append(c)
        counts = [_established(pid, port) for pid in pids]
        for i, c in enumerate(clients):
            c.mail("app@example.com")
            c.rcpt(f"u{10_000 + i}@dest.test")
            code, reply = c.data(_message(10_000 + i))
            assert code == 250, reply
            found = _QUEUED.search(reply)
            assert found, reply
            queued.append(found.group(1).decode())
    finally:
        for c in clients:
            c.quit()
    return counts, queued


async def test_two_workers_on_postgresql_accept_and_lose_nothing_on_kill_9(
    tmp_path: Path,
    pg_server: PgServer,  # noqa: F811
    pg_dsn: str,  # noqa: F811
) -> None:
    await migrated(pg_dsn)
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        cfg = _config(tmp_path, pg_server, pg_dsn, sinks.port)
        port = cfg.address("submission", "listen_plain")[1]
        daemon = Daemon(cfg)
        await asyncio.to_thread(daemon.start)
        try:
            pids = _worker_pids(daemon)
            assert sorted(pids) == [0, 1]
            assert "event=worker_ready" in daemon.log()
            # forked by the template, itself forked from the owner before its loop
            assert daemon.proc is not None
            parents = {_ppid(pid) for pid in pids.values()}
            assert len(parents) == 1, parents
            template = parents.pop()
            assert template != daemon.proc.pid and _ppid(template) == daemon.proc.pid
            # each worker's own pool, opened after its fork: the template had none to pass on
            pg = pg_server.port
            assert all(_established(pid, pg, remote=True) > 0 for pid in pids.values())
            assert _established(template, pg, remote=True) == 0
            counts, queued = await asyncio.to_thread(_held_sessions, port, [pids[0], pids[1]])
            assert sum(counts) == HELD and all(n > 0 for n in counts), counts
            # kill -9 of worker 0 while sessions keep coming (5 messages each)
            victim = pids[0]
            sender = Sender(port)
            threads = sender.run(8, 25, per_session=5)
            await wait_for(lambda: len(sender.queued) >= 40, 60)
            os.kill(victim, signal.SIGKILL)
            await _join(threads)
            await wait_for(lambda: "event=worker_restarted worker=0" in daemon.log(), 30)
            assert _worker_pids(daemon)[0] != victim
            assert _ppid(_worker_pids(daemon)[0]) == template  # the restart: forked too
            acked = collections.Counter(queued + sender.queued)
            assert len(acked) == HELD + 200 and all(n == 1 for n in acked.values())
            await wait_for(lambda: set(acked) <= set(_sink_ids(sink)), 60)
            await asyncio.sleep(0.5)  # a duplicate would arrive now
            got = _sink_ids(sink)
            assert all(got[q] == 1 for q in acked)  # each acknowledged one delivered once
            # Only what the killed worker had committed but not yet answered may be extra
            # (the client sent it again): at most one per session it held.
            assert len(set(got) - set(acked)) <= 8, set(got) - set(acked)
        finally:
            code = await asyncio.to_thread(daemon.stop)
        assert code == 0, daemon.log()[-3000:]
