"""``[server] workers = 2``: submission in two worker processes, the queue in the owner.

A real daemon (owner + two ``serve --worker`` processes binding the listener with
SO_REUSEPORT), smtplib clients on the trusted plaintext listener, delivery to an aiosmtpd
sink, DKIM verified with dkimpy against the generated key. Every queue id a client got a
250 for must reach the sink, whatever happens to a worker.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import signal
import smtplib
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from mtaserver.dkim import keys as K
from tests.support.daemon import Daemon, TestConfig, free_port
from tests.support.dkimtools import dkim_entries, dkimpy_verify, make_key
from tests.support.mxsink import SinkGroup, SinkState, wait_for

pytestmark = pytest.mark.pg_pending("workers")

_QUEUED = re.compile(rb"queued as ([0-9A-Z]{16})")
_MSGID = re.compile(rb"(?im)^message-id:\s*<([0-9A-Z]{16})@")


def _message(i: int) -> bytes:
    return (
        f"From: App <app@example.com>\r\nTo: u{i}@dest.test\r\nSubject: worker {i}\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"message {i}\r\n" + "line of body text\r\n" * 40
    ).encode()


def _config(tmp_path: Path, sink_port: int, workers: int = 2) -> TestConfig:
    cfg = TestConfig(tmp_path, tls=False)
    cfg.set("server", workers=workers)
    cfg.set("delivery", relay_host=f"127.0.0.2:{sink_port}", tls="none")
    cfg.set("shaping", poll_interval="20ms")
    cfg.set("submission", max_connections_per_ip=200)
    return cfg


def _worker_pids(daemon: Daemon) -> dict[int, int]:
    """worker index → pid of its latest process, from the owner's worker_started lines."""
    found = re.findall(r"event=worker_started worker=(\d+) pid=(\d+)", daemon.log())
    return {int(i): int(p) for i, p in found}


def _sink_ids(sink: SinkState) -> collections.Counter[str]:
    ids: collections.Counter[str] = collections.Counter()
    for m in sink.messages:
        found = _MSGID.search(m.data)
        assert found, m.data[:500]
        ids[found.group(1).decode()] += 1
    return ids


class Sender:
    """Sessions in threads: each sends its messages, records every 250's queue id, and
    after a failure (reset, 421, 451) reconnects and sends the same message again."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.queued: list[str] = []
        self.failures = 0
        self._lock = threading.Lock()

    def session(self, indexes: list[int], per_session: int | None = None) -> None:
        todo = list(indexes)
        deadline = time.monotonic() + 120
        while todo and time.monotonic() < deadline:
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as client:
                    client.ehlo()
                    sent = 0
                    while todo and (per_session is None or sent < per_session):
                        i = todo[0]
                        client.mail("app@example.com")
                        client.rcpt(f"u{i}@dest.test")
                        code, reply = client.data(_message(i))
                        if code != 250:
                            raise smtplib.SMTPResponseException(code, reply)
                        found = _QUEUED.search(reply)
                        assert found, reply
                        with self._lock:
                            self.queued.append(found.group(1).decode())
                        todo.pop(0)
                        sent += 1
            except (OSError, smtplib.SMTPException):
                with self._lock:
                    self.failures += 1
                time.sleep(0.05)
        assert not todo, f"{len(todo)} messages never accepted"

    def run(
        self, sessions: int, per: int, per_session: int | None = None
    ) -> list[threading.Thread]:
        threads = [
            threading.Thread(
                target=self.session, args=(list(range(s * per, (s + 1) * per)), per_session)
            )
            for s in range(sessions)
        ]
        for t in threads:
            t.start()
        return threads


async def _join(threads: list[threading.Thread]) -> None:
    for t in threads:
        await asyncio.to_thread(t.join, 180)
        assert not t.is_alive()


async def test_200_messages_over_20_sessions_delivered_once_and_signed(tmp_path: Path) -> None:
    key = make_key(tmp_path, "example.com", "w1", K.Algorithm.RSA)
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        cfg = _config(tmp_path, sinks.port)
        cfg.data["dkim"] = dkim_entries([key], {"w1"})
        admin = free_port()
        cfg.set("admin", listen=f"127.0.0.1:{admin}", metrics_auth="none")
        port = cfg.address("submission", "listen_plain")[1]
        daemon = Daemon(cfg)
        await asyncio.to_thread(daemon.start)
        try:
            assert sum("READY=1" in n.split("\n") for n in daemon.notifications) == 1
            pids = _worker_pids(daemon)
            assert sorted(pids) == [0, 1] and daemon.proc is not None
            assert daemon.proc.pid not in pids.values()
            sender = Sender(port)
            await _join(sender.run(20, 10))
            assert len(sender.queued) == 200 and sender.failures == 0
            await wait_for(lambda: len(sink.messages) >= 200, 60)
            await asyncio.sleep(0.5)  # a duplicate would arrive now
            ids = _sink_ids(sink)
            assert ids == collections.Counter(sender.queued)
            assert all(n == 1 for n in ids.values())
            for m in sink.messages:
                assert dkimpy_verify(m.data, [key]) == [True]
            # one /metrics for the daemon: the workers' sessions are counted by the owner
            metrics = await asyncio.to_thread(_scrape, admin)
            assert 'mtaserver_smtp_sessions_total{listener="plain"} 20.0' in metrics, metrics
        finally:
            code = await asyncio.to_thread(daemon.stop)
        assert code == 0, daemon.log()
        for pid in pids.values():
            assert not _alive(pid)


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text: str = r.read().decode()
    return text


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_kill_9_of_a_worker_loses_nothing_acknowledged(tmp_path: Path) -> None:
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        cfg = _config(tmp_path, sinks.port)
        admin = free_port()
        cfg.set("admin", listen=f"127.0.0.1:{admin}", metrics_auth="none")
        port = cfg.address("submission", "listen_plain")[1]
        daemon = Daemon(cfg)
        await asyncio.to_thread(daemon.start)
        try:
            victim = _worker_pids(daemon)[0]
            sender = Sender(port)
            # new sessions keep coming (5 messages each), so both workers get some
            threads = sender.run(10, 40, per_session=5)
            await wait_for(lambda: len(sender.queued) >= 60, 60)
            os.kill(victim, signal.SIGKILL)
            await wait_for(lambda: _worker_pids(daemon)[0] != victim, 30)
            await _join(threads)
            await wait_for(lambda: "event=worker_restarted worker=0" in daemon.log(), 30)
            new = _worker_pids(daemon)[0]
            assert _alive(new) and not _alive(victim)
            assert "event=worker_died worker=0" in daemon.log()
            metrics = await asyncio.to_thread(_scrape, admin)
            assert 'mtaserver_task_restarts_total{service="worker-0"} 1.0' in metrics
            queued = set(sender.queued)
            assert len(queued) == len(sender.queued) >= 400
            await wait_for(lambda: queued <= set(_sink_ids(sink)), 60)
            # the restarted worker serves: a fresh burst is accepted by both
            again = Sender(port)
            await _join(again.run(6, 3, per_session=1))
            assert len(again.queued) == 18
        finally:
            code = await asyncio.to_thread(daemon.stop)
        assert code == 0, daemon.log()


async def test_sigterm_drains_workers_then_owner(tmp_path: Path) -> None:
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        cfg = _config(tmp_path, sinks.port)
        port = cfg.address("submission", "listen_plain")[1]
        daemon = Daemon(cfg)
        await asyncio.to_thread(daemon.start)
        pids = _worker_pids(daemon)
        sender = Sender(port)
        stop_after = threading.Event()

        def session() -> None:
            # one long session: after SIGTERM its next MAIL gets 421, which ends it
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                    client.ehlo()
                    i = 0
                    while True:
                        client.mail("app@example.com")
                        client.rcpt(f"u{i}@dest.test")
                        code, reply = client.data(_message(i))
                        if code != 250:
                            break
                        found = _QUEUED.search(reply)
                        assert found
                        sender.queued.append(found.group(1).decode())
                        i += 1
                        if i == 20:
                            stop_after.set()
            except (OSError, smtplib.SMTPException):
                pass

        threads = [threading.Thread(target=session) for _ in range(4)]
        for t in threads:
            t.start()
        await asyncio.to_thread(stop_after.wait, 60)
        assert daemon.proc is not None
        daemon.proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(daemon.proc.wait, 60)
        await _join(threads)
        log = daemon.log()
        assert code == 0, log
        for pid in pids.values():
            assert not _alive(pid)
        assert log.count("event=worker_stopped") == 2
        assert log.index("event=workers_stopped") < log.rindex("event=stopped")
        assert "worker_died" not in log
        # every acknowledged message is in the queue: a fresh daemon (workers = 1) sends it
        queued = set(sender.queued)
        assert queued
        cfg.set("server", workers=1)
        with Daemon(cfg):
            await wait_for(lambda: queued <= set(_sink_ids(sink)), 60)


async def test_sighup_reaches_every_worker(tmp_path: Path) -> None:
    async with SinkGroup(["127.0.0.2"]) as sinks:
        cfg = _config(tmp_path, sinks.port)
        port = cfg.address("submission", "listen_plain")[1]
        daemon = Daemon(cfg)
        await asyncio.to_thread(daemon.start)
        try:

            def third_rcpt() -> list[int]:
                codes = []
                for _ in range(12):  # new connections: the kernel spreads them over workers
                    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
                        client.ehlo()
                        client.mail("app@example.com")
                        for i in range(3):
                            code, _ = client.rcpt(f"r{i}@dest.test")
                        codes.append(code)
                return codes

            assert set(await asyncio.to_thread(third_rcpt)) == {250}
            cfg.set("submission", max_recipients=2)
            cfg.write()
            await asyncio.to_thread(daemon.reload)
            log = daemon.log()
            assert log.count("event=worker_reloaded") == 2
            assert log.rindex("event=worker_reloaded") < log.rindex("event=reloaded")
            assert set(await asyncio.to_thread(third_rcpt)) == {452}
            ready = [n for n in daemon.notifications if "READY=1" in n.split("\n")]
            assert len(ready) == 2  # start, reload: one each for the whole daemon
        finally:
            code = await asyncio.to_thread(daemon.stop)
        assert code == 0, daemon.log()


async def test_a_second_daemon_on_the_database_is_refused(tmp_path: Path) -> None:
    async with SinkGroup(["127.0.0.2"]) as sinks:
        cfg = _config(tmp_path, sinks.port)
        with Daemon(cfg) as daemon:
            out = daemon.cli("serve")
            assert out.returncode == 1
            assert "another mtaserver is already running" in out.stderr
            assert len(_worker_pids(daemon)) == 2
