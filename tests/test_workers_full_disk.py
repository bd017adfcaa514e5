"""A full disk with ``workers = 2``: the workers answer 452, nothing acknowledged is lost.

The same real 8 MiB tmpfs as test_full_disk.py (mounted when the test runs as root, as CI
does). The workers see the low space themselves (452 at MAIL) and the owner's failed
commit comes back to them as 452 at DATA — never a 250 for a message that was not stored.
Each worker is asked (which one serves a connection is read from /proc). Space comes back
and, without a restart, they accept again; a restart on a full disk starts its workers,
says READY and answers 452 from each.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, TestConfig
from tests.support.mxsink import SinkGroup, eventually, wait_for
from tests.test_full_disk import _fill_rest, _mount, _queue_id, _submit, _transaction
from tests.test_workers import _worker_pids
from tests.test_workers_reliability import connect_to_each

pytestmark = pytest.mark.sqlite_only("fills the disk under the SQLite file")


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "data"
    if not _mount(where):
        pytest.skip("needs root to mount a tmpfs (CI runs as root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30, check=False)


def _on_each_worker(port: int, pids: set[int], n: int) -> list[tuple[str, str]]:
    """One message through every worker (:func:`_transaction`'s stage and reply)."""
    clients, _ = connect_to_each(port, pids)
    try:
        return [_transaction(c, n + i) for i, c in enumerate(clients.values())]
    finally:
        for client in clients.values():
            client.close()


def _delivered(messages: list[bytes]) -> set[str]:
    ids = set()
    for data in messages:
        found = re.search(rb"Message-ID: <([^@>]+)@", data, re.IGNORECASE)
        if found:
            ids.add(found.group(1).decode())
    return ids


async def test_full_disk_with_workers(tmp_path: Path, tmpfs: Path) -> None:
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        sink.data_reply = "451 4.3.0 try later"  # the queue only grows
        cfg = TestConfig(tmp_path, tls=False)
        cfg.set("server", data_dir=str(tmpfs), log_level="info", workers=2)
        # A delivery whose outcome could not be recorded on the full disk stays leased
        # until the lease ends: keep it short so the test does not wait 10 minutes.
        cfg.set("delivery", relay_host=f"127.0.0.2:{sinks.port}", tls="none",
                max_connections=2, nameservers=["127.0.0.1:9"], lease="10s")  # fmt: skip
        cfg.set("shaping", poll_interval="50ms", retry_schedule=["1s"], retry_every="1s")
        cfg.set("storage", min_free="1MiB")
        port = cfg.address("submission", "listen_plain")[1]
        ballast = tmpfs / "ballast"
        # Larger than test_full_disk's 3 MiB: the WAL may grow to its ~4 MiB checkpoint size
        # after the space comes back, and what is given back must still cover min_free.
        ballast.write_bytes(b"\0" * (9 << 19))
        daemon = Daemon(cfg)
        await asyncio.to_thread(daemon.start)
        acked: list[str] = []
        try:
            refusal = ""
            for n in range(400):
                stage, reply = await asyncio.to_thread(_submit, port, n)
                if stage != "ok":
                    refusal = reply
                    break
                acked.append(_queue_id(reply))
            assert refusal.startswith("452 4.3.1"), refusal
            assert acked
            filler = await asyncio.to_thread(_fill_rest, tmpfs)
            await asyncio.sleep(1.2)  # each worker's free-space answer is kept for 1 s
            pids = set(_worker_pids(daemon).values())
            for stage, reply in await asyncio.to_thread(_on_each_worker, port, pids, 400):
                assert stage != "ok" and reply.startswith("452 4.3.1"), (stage, reply)
            assert daemon.proc is not None and daemon.proc.poll() is None
            assert "worker_died" not in daemon.log()
            filler.unlink()
            ballast.unlink()

            async def attempt() -> tuple[str, str]:
                return await asyncio.to_thread(_submit, port, 999)

            stage, reply = await eventually(attempt, lambda r: r[0] == "ok", timeout=30)
            sizes = {p.name: p.stat().st_size for p in tmpfs.iterdir()}
            assert stage == "ok", (reply, sizes, shutil.disk_usage(tmpfs))
            acked.append(_queue_id(reply))
            sink.data_reply = None
            await wait_for(
                lambda: set(acked) <= _delivered([m.data for m in sink.messages]), timeout=90
            )
            assert "Traceback" not in daemon.log()
        finally:
            code = await asyncio.to_thread(daemon.stop)
        assert code == 0, daemon.log()

        filler = await asyncio.to_thread(_fill_rest, tmpfs)
        again = Daemon(cfg)
        await asyncio.to_thread(again.start)
        try:
            pids = set(_worker_pids(again).values())
            for stage, reply in await asyncio.to_thread(_on_each_worker, port, pids, 2000):
                assert stage != "ok" and reply.startswith("452 4.3.1"), (stage, reply)
            filler.unlink()

            async def after_restart() -> tuple[str, str]:
                return await asyncio.to_thread(_submit, port, 2001)

            # accepted again once the free-space answer (kept 1 s) sees the room
            stage, reply = await eventually(after_restart, lambda r: r[0] == "ok", timeout=10)
            assert stage == "ok", reply
        finally:
            code = await asyncio.to_thread(again.stop)
        assert code == 0, again.log()
