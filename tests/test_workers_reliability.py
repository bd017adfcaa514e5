"""The reliability guarantees at ``[server] workers = 2``, checked in *every* worker.

Connections are spread over the workers by the kernel (SO_REUSEPORT), so a test that only
opens "enough" sessions cannot say which worker answered. :func:`serving_pid` can: it finds,
in ``/proc``, the worker process holding the server's end of a client's TCP connection, and
:func:`connect_to_each` opens sessions until it has one on every worker.

One daemon goes through a whole life: sessions on both workers; a bad reload (kept by all);
a good one (a new DKIM selector and recipient limit, taken by each worker before the one
READY=1); /metrics as one sum over both; kill -9 of the owner while sessions send (the
workers exit; everything acknowledged is delivered after the restart); then SIGTERM with a
transaction in progress on each worker, sent to every process at once as systemd does
(both finish, exit 0). The kill -9 of a worker under load and a second daemon on the
database are in test_workers.py; the full disk in test_workers_full_disk.py; the lifecycle
and delivery crash tests run at workers = 1 and 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import smtplib
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TypeVar

from mtaserver.dkim import keys as K
from tests.support.daemon import Daemon, free_port
from tests.support.dkimtools import dkim_entries, dkimpy_verify, make_key
from tests.support.mxsink import SinkGroup, eventually, wait_for
from tests.test_full_disk import _metric
from tests.test_lifecycle import STATES
from tests.test_workers import (
    _MSGID,
    _QUEUED,
    Sender,
    _alive,
    _config,
    _join,
    _message,
    _scrape,
    _sink_ids,
    _worker_pids,
)

_T = TypeVar("_T")
_SELECTOR = re.compile(rb"(?i)DKIM-Signature:[^:]*?\bs=([a-z0-9]+)")


def serving_pid(client: socket.socket, pids: Iterable[int]) -> int | None:
    """Which of ``pids`` holds the server's end of this (accepted) loopback connection."""
    here, there = client.getsockname()[1], client.getpeername()[1]
    inode = ""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(a.rsplit(":", 1)[1], 16) for a in fields[1:3])
        if local == there and remote == here:
            inode = fields[9]
    if inode in ("", "0"):  # not accepted yet
        return None
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") == f"socket:[{inode}]":
                        return pid
    return None


def connect_to_each(
    port: int, pids: Iterable[int], tries: int = 60
) -> tuple[dict[int, smtplib.SMTP], int]:
    """One open session on every worker (the caller closes them), and how many sessions
    it took: one landing on a worker already covered just quits."""
    todo, got, opened = set(pids), dict[int, smtplib.SMTP](), 0
    try:
        while todo and opened < tries:
            client = smtplib.SMTP("127.0.0.1", port, timeout=30)  # banner read: accepted
            opened += 1
            assert client.sock is not None
            pid = serving_pid(client.sock, got.keys() | todo)
            if pid in todo:
                todo.discard(pid)
                got[pid] = client
            else:
                client.quit()
    except BaseException:
        for client in got.values():
            client.close()
        raise
    assert not todo, f"no session reached worker(s) {todo} in {tries} connections"
    return got, opened


def _send(client: smtplib.SMTP, rcpts: int) -> tuple[int, str]:
    """One transaction with ``rcpts`` recipients: (code of the last RCPT, queue id or "")."""
    client.ehlo()
    client.mail("app@example.com")
    for i in range(rcpts):
        code, _ = client.rcpt(f"r{i}@dest.test")
    if code != 250:
        client.rset()
        return code, ""
    code, reply = client.data(_message(rcpts))
    found = _QUEUED.search(reply)
    assert code == 250 and found, reply
    return code, found.group(1).decode()


async def test_a_daemon_life_at_workers_2(tmp_path: Path) -> None:
    keys = [make_key(tmp_path, "example.com", s, K.Algorithm.RSA) for s in ("s1", "s2")]
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        cfg = _config(tmp_path, sinks.port)
        cfg.data["dkim"] = dkim_entries(keys, {"s1"})
        cfg.set("submission", max_recipients=3)
        cfg.set("server", drain_timeout="20s")
        admin = free_port()
        cfg.set("admin", listen=f"127.0.0.1:{admin}", metrics_auth="none")
        port = cfg.address("submission", "listen_plain")[1]
        daemon = Daemon(cfg)
        await asyncio.to_thread(daemon.start)
        pids = set(_worker_pids(daemon).values())
        sessions = 0

        def each(work: Callable[[smtplib.SMTP], _T]) -> dict[int, _T]:
            """``work`` on one session of every worker."""
            nonlocal sessions
            clients, opened = connect_to_each(port, pids)
            sessions += opened
            try:
                return {pid: work(client) for pid, client in clients.items()}
            finally:
                for client in clients.values():
                    client.quit()

        try:
            # 1. Both workers take three recipients and sign with s1.
            first = await asyncio.to_thread(each, lambda c: _send(c, 3))
            assert {code for code, _ in first.values()} == {250}

            # 2. A bad file: rejected by the owner, no worker re-reads, one READY=1.
            cfg.path.write_text("[server\n")
            await asyncio.to_thread(daemon.reload)
            assert "event=reload_rejected" in daemon.log()
            assert "event=worker_reloaded" not in daemon.log()

            # 3. A good file: every worker takes it before the daemon's READY=1.
            cfg.data["dkim"] = dkim_entries(keys, {"s2"})
            cfg.set("submission", max_recipients=2)
            cfg.write()
            await asyncio.to_thread(daemon.reload)
            log = daemon.log()
            assert log.count("event=worker_reloaded") == 2, log
            assert log.rindex("event=worker_reloaded") < log.rindex("event=reloaded")
            third = await asyncio.to_thread(each, lambda c: _send(c, 3))
            assert {code for code, _ in third.values()} == {452}  # the new limit, in each
            second = await asyncio.to_thread(each, lambda c: _send(c, 2))
            assert {code for code, _ in second.values()} == {250}

            # Signed with the selector each worker had at the time, and verifiable.
            before = {q for _, q in first.values()}
            after = {q for _, q in second.values()}
            await wait_for(lambda: before | after <= set(_sink_ids(sink)), 30)
            for m in sink.messages:
                found = _SELECTOR.search(m.data)
                assert found and dkimpy_verify(m.data, keys) == [True], m.data[:800]
                msgid = _MSGID.search(m.data)
                assert msgid is not None
                selector = b"s1" if msgid.group(1).decode() in before else b"s2"
                assert found.group(1) == selector

            # 4. One /metrics for the daemon: sessions counted by both workers, summed.
            async def scrape() -> str:
                return await asyncio.to_thread(_scrape, admin)

            metrics = await eventually(
                scrape, lambda t: _metric(t, "mtaserver_smtp_sessions_total") == sessions
            )
            assert _metric(metrics, "mtaserver_smtp_sessions_total") == sessions, metrics
            assert _metric(metrics, "mtaserver_messages_accepted_total") == 4
            assert _metric(metrics, "mtaserver_recipients_accepted_total") == 3 * 2 + 2 * 2

            # 5. kill -9 of the owner while sessions send (and it delivers): the workers see
            # the link close and exit; what it acknowledged is delivered after the restart.
            sender = Sender(port)
            threads = sender.run(8, 20, per_session=4)  # they retry until a daemon takes them
            await wait_for(lambda: len(sender.queued) >= 40, 60)
        finally:
            await asyncio.to_thread(daemon.kill)
        at_kill = len(sender.queued)
        for pid in pids:
            await wait_for(lambda pid=pid: not _alive(pid), 30)  # type: ignore[misc]
        assert at_kill < 160, "the load was over before the kill; nothing was tested"
        assert daemon.log().count("event=owner_gone") == 2
        states = [x for n in daemon.notifications for x in n.split("\n") if x in STATES]
        assert states == ["READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "READY=1"]

        again = Daemon(cfg)
        await asyncio.to_thread(again.start)
        try:
            await _join(threads)
            queued = set(sender.queued)
            assert len(queued) == len(sender.queued) == 160 and sender.failures > 0
            await wait_for(lambda: queued <= set(_sink_ids(sink)), 60)

            # 6. SIGTERM with a transaction in progress on each worker: both finish. As
            # `systemctl stop` sends it (KillMode=control-group): to every process at once.
            # (The owner alone forwarding it: test_lifecycle.py and test_workers.py.)
            pids = set(_worker_pids(again).values())
            busy, _ = await asyncio.to_thread(connect_to_each, port, pids)
            for client in busy.values():
                await asyncio.to_thread(_half_sent, client)
            assert again.proc is not None
            for pid in (again.proc.pid, *pids):
                os.kill(pid, signal.SIGTERM)
            await asyncio.to_thread(again.wait_for, "STOPPING=1")
            drained = await asyncio.gather(*(asyncio.to_thread(_finish, c) for c in busy.values()))
            await asyncio.to_thread(again.proc.wait, 30)
        finally:
            code = await asyncio.to_thread(again.stop)
        log = again.log()
        assert code == 0, log
        assert all(not _alive(pid) for pid in pids)
        assert log.count("event=worker_stopped") == 2 and "worker_died" not in log
        for queue_id in drained:
            (row,) = cfg.query("SELECT body FROM messages WHERE id=?", queue_id)
            assert b"second half" in row[0]


def _half_sent(client: smtplib.SMTP) -> None:
    """A transaction stopped in the middle of DATA; the session stays open."""
    client.ehlo()
    client.mail("app@example.com")
    client.rcpt("late@dest.test")
    code, _ = client.docmd("DATA")
    assert code == 354
    client.send(b"From: app@example.com\r\nSubject: in flight\r\n\r\nfirst half\r\n")


def _finish(client: smtplib.SMTP) -> str:
    client.send(b"second half\r\n.\r\n")
    code, reply = client.getreply()
    found = _QUEUED.search(reply)
    assert code == 250 and found, (code, reply)
    with contextlib.suppress(smtplib.SMTPException, OSError):
        client.close()
    return found.group(1).decode()
