"""The owner's hold on its workers at ``[server] workers = 2``: start-up, reload, stop.

One daemon (TLS, two workers, both forked by the template the owner split off before its
loop, as is every restart) goes through:

1. a reload every worker refuses (a chain whose CA has a 1024-bit key: the config check
   passes it, OpenSSL refuses it), reported to the owner by each worker, which keeps its
   whole previous config; then a good reload taken by each — one READY=1 per reload;
2. a restarted worker that never reports ready — its config names a certificate that
   became a FIFO, so reading it blocks, as on a stuck mount — is killed (-9) after
   ``server.worker_start_timeout`` and started again with back-off until it comes up;
   after kill -9 of the template, a worker's death is still seen and it restarts as a
   fresh interpreter;
3. SIGTERM: every worker's listeners are closed before STOPPING=1 (a connection made the
   moment it arrives is refused), then the drain, exit 0.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import smtplib
import socket
import subprocess
from pathlib import Path

import pytest

from tests.support.daemon import Daemon, TestConfig
from tests.support.mxsink import wait_for
from tests.test_lifecycle import STATES
from tests.test_workers import _alive, _worker_pids
from tests.test_workers_reliability import connect_to_each


def _weak_cert(dir: Path) -> tuple[Path, Path]:
    """A leaf (SHA-256, RSA-2048) and its CA (RSA-1024) in the chain file: the config check
    passes it (it checks the leaf's key and every digest; a SHA-1 signature it refuses
    itself), but OpenSSL's security level refuses the CA's key at load."""

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=dir, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:1024", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-subj", "/CN=weak ca", "-days", "2")  # fmt: skip
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "weak.key", "-out", "weak.csr",
        "-subj", "/CN=mta.test")  # fmt: skip
    run("x509", "-req", "-in", "weak.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "leaf.pem", "-days", "2", "-sha256")  # fmt: skip
    (dir / "weak.pem").write_bytes((dir / "leaf.pem").read_bytes() + (dir / "ca.pem").read_bytes())
    os.chmod(dir / "weak.key", 0o600)
    return dir / "weak.pem", dir / "weak.key"


def _third_rcpt(client: smtplib.SMTP) -> int:
    client.ehlo()
    client.mail("app@example.com")
    for i in range(3):
        code, _ = client.rcpt(f"r{i}@dest.test")
    client.rset()
    return code


def _each(port: int, pids: set[int]) -> dict[int, int]:
    """The third RCPT's code on one session of every worker."""
    clients, _ = connect_to_each(port, pids)
    try:
        return {pid: _third_rcpt(c) for pid, c in clients.items()}
    finally:
        for c in clients.values():
            c.quit()


def _ppid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def _states(daemon: Daemon) -> list[str]:
    return [x for n in daemon.notifications for x in n.split("\n") if x in STATES]


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
async def test_start_timeout_reload_failures_and_stop_order(tmp_path: Path) -> None:
    cfg = TestConfig(tmp_path)
    cfg.set("server", workers=2)
    cfg.set("submission", max_recipients=3)
    port = cfg.address("submission", "listen_plain")[1]
    cert = Path(cfg.data["tls"]["cert"])
    good = cert.read_bytes()
    daemon = Daemon(cfg)
    await asyncio.to_thread(daemon.start)
    try:
        pids = set(_worker_pids(daemon).values())
        assert set((await asyncio.to_thread(_each, port, pids)).values()) == {250}
        # forked by the template, itself forked from the owner before its loop
        assert daemon.proc is not None
        template = {_ppid(pid) for pid in pids}
        assert len(template) == 1 and _ppid(template.pop()) == daemon.proc.pid

        # 1. A reload each worker refuses (with a new limit in it): reported, all kept.
        tls = dict(cfg.data["tls"])
        weak_cert, weak_key = _weak_cert(tmp_path)
        cfg.data["tls"] = {"cert": str(weak_cert), "key": str(weak_key)}
        cfg.set("submission", max_recipients=2)
        cfg.write()
        await asyncio.to_thread(daemon.reload)
        log = daemon.log()
        for i in (0, 1):
            assert f"event=worker_reload_failed worker={i} error=" in log, log
        assert "CA_KEY_TOO_SMALL" in log and "event=worker_reloaded" not in log
        assert set((await asyncio.to_thread(_each, port, pids)).values()) == {250}
        # ... and the next good one is taken by each, before the one READY=1.
        cfg.data["tls"] = tls
        cfg.set("server", worker_start_timeout="3s")  # for step 2 (a start under load: 60 s)
        cfg.write()
        await asyncio.to_thread(daemon.reload)
        log = daemon.log()
        assert log.count("event=worker_reloaded") == 2, log
        assert log.rindex("event=worker_reloaded") < log.rindex("event=reloaded")
        assert set((await asyncio.to_thread(_each, port, pids)).values()) == {452}
        assert _states(daemon) == ["READY=1", "RELOADING=1", "READY=1", "RELOADING=1", "READY=1"]

        # 2. A restarted worker hangs before READY: killed after 3 s, restarted, comes up.
        fifo = tmp_path / "cert.fifo"
        os.mkfifo(fifo)
        os.replace(fifo, cert)
        victim = _worker_pids(daemon)[0]
        os.kill(victim, signal.SIGKILL)
        await wait_for(lambda: "event=worker_start_timeout worker=0" in daemon.log(), 30)
        hung = int(re.findall(r"event=worker_start_timeout worker=0 pid=(\d+)", daemon.log())[0])
        assert hung != victim
        await wait_for(lambda: not _alive(hung), 10)
        fixed = tmp_path / "cert.new"
        fixed.write_bytes(good)
        os.replace(fixed, cert)
        await wait_for(lambda: "event=worker_restarted worker=0" in daemon.log(), 30)
        pids = set(_worker_pids(daemon).values())
        assert hung not in pids and victim not in pids
        assert len({_ppid(pid) for pid in pids}) == 1  # the restart forked from it too

        # kill -9 of the template: its workers go on; a worker that dies is still seen
        # (pidfd) and comes back as a fresh interpreter.
        os.kill(_ppid(min(pids)), signal.SIGKILL)
        await wait_for(lambda: "event=worker_template_gone" in daemon.log(), 10)
        victim = _worker_pids(daemon)[1]
        os.kill(victim, signal.SIGKILL)
        await wait_for(lambda: "event=worker_restarted worker=1" in daemon.log(), 30)
        fresh = _worker_pids(daemon)[1]
        assert _ppid(fresh) == daemon.proc.pid
        pids = set(_worker_pids(daemon).values())
        assert set((await asyncio.to_thread(_each, port, pids)).values()) == {452}
        assert set((await asyncio.to_thread(_each, port, pids)).values()) == {452}

        # 3. SIGTERM: by STOPPING=1 no listener of any worker takes a connection.
        assert daemon.proc is not None
        logged = len(daemon.log())
        daemon.proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(daemon.wait_for, "STOPPING=1")
        for key in ("listen_plain", "listen", "listen_tls"):
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(cfg.address("submission", key), timeout=5).close()
        assert await asyncio.to_thread(daemon.proc.wait, 30) == 0
        after = daemon.log()[logged:]
        assert after.count("event=worker_stopped") == 2 and "worker_died" not in after
    finally:
        code = await asyncio.to_thread(daemon.stop)
    assert code == 0, daemon.log()
