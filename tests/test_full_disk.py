"""A full disk never kills the daemon, and nothing it acknowledged is lost.

``data_dir`` is a real 8 MiB tmpfs (mounted by the test when it runs as root, which CI does):
every writer on that filesystem fails together, as on a production disk that filled up —
unlike ``PRAGMA max_page_count``, which fails one connection's writes only (that variant stays
in test_submission_durability.py for machines where mounting is not allowed).

The real daemon fills it with submissions while a slow test MX drains the queue, then:
submission and inbound answer 452 4.3.1, tracking hits are answered and counted as dropped,
the scheduler, webhooks and retention keep running (they back off and log), and the process
stays up. Space comes back (a filler file is removed) and, without a restart, submissions
are accepted again and every acknowledged message reaches the MX. A restart on a still-full
disk starts, says READY and answers 452.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from mtaserver.tracking.tokens import TokenCodec, load_secrets
from tests.support.daemon import Daemon, TestConfig, free_port
from tests.support.mxsink import SinkGroup, eventually, wait_for

pytestmark = pytest.mark.sqlite_only(
    "fills the filesystem of the SQLite file; on PostgreSQL the queue is on the server's disk"
)

SIZE_MB = 8
BODY = b"".join(b"%06d " % i + b"x" * 70 + b"\r\n" for i in range(1200))  # ~92 KiB


def _mount(where: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m,mode=0700", "tmpfs", str(where)],
        capture_output=True, timeout=30, check=False,
    )  # fmt: skip
    return out.returncode == 0


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    where = tmp_path / "data"
    if not _mount(where):
        pytest.skip("needs root to mount a tmpfs (CI runs as root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30, check=False)


def _submit(port: int, n: int) -> tuple[str, str]:
    """(stage, reply): stage is "mail", "data" or "ok"; reply the server's text."""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        return _transaction(smtp, n)


def _transaction(smtp: smtplib.SMTP, n: int) -> tuple[str, str]:
    """One message on an open session: as :func:`_submit`."""
    smtp.ehlo("client.test")
    code, msg = smtp.mail("app@sender.test")
    if code != 250:
        return "mail", f"{code} {msg.decode()}"
    code, msg = smtp.rcpt(f"u{n}@dest.test")
    assert code == 250, msg
    code, msg = smtp.data(
        b"From: app@sender.test\r\nTo: u%d@dest.test\r\nSubject: fill %d\r\n\r\n" % (n, n) + BODY
    )
    if code != 250:
        return "data", f"{code} {msg.decode()}"
    return "ok", f"{code} {msg.decode()}"


def _queue_id(reply: str) -> str:
    m = re.search(r"queued as (\S+)", reply)
    assert m, reply
    return m.group(1)


def _fill_rest(where: Path) -> Path:
    """Take whatever space is left (a filler the test can delete to give it back)."""
    filler = where / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for chunk in (65536, 4096, 512):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    return filler


def _inbound_reply(port: int) -> str:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("isp.test")
        code, msg = smtp.mail("")
        if code != 250:
            return f"{code} {msg.decode()}"
        code, msg = smtp.rcpt("fbl@bounces.test")
        if code != 250:
            return f"{code} {msg.decode()}"
        code, msg = smtp.data(b"From: isp@isp.test\r\nSubject: report\r\n\r\nhello\r\n")
        return f"{code} {msg.decode()}"


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_full_disk_answers_452_keeps_running_and_resumes(
    tmp_path: Path, small_fs: Path
) -> None:
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        sink.data_reply = "451 4.3.0 try later"  # the MX defers: the queue only grows
        cfg = TestConfig(tmp_path, tls=False)
        cfg.set("server", data_dir=str(small_fs), log_level="info")
        cfg.set("delivery", relay_host=f"127.0.0.2:{sinks.port}", tls="none",
                max_connections=2, nameservers=["127.0.0.1:9"])  # fmt: skip
        cfg.set("shaping", poll_interval="50ms", retry_schedule=["1s"], retry_every="1s")
        cfg.set("shaping.default", max_connections=2)
        inbound_port, tracking_port, admin_port = free_port(), free_port(), free_port()
        cfg.set("inbound", listen=f"127.0.0.1:{inbound_port}", bounce_domain="bounces.test",
                complaints_address="fbl@bounces.test")  # fmt: skip
        cfg.set("tracking", listen=f"127.0.0.1:{tracking_port}",
                base_url=f"http://127.0.0.1:{tracking_port}")  # fmt: skip
        cfg.set("admin", listen=f"127.0.0.1:{admin_port}", metrics_auth="none")
        cfg.set("retention", interval="1s")
        cfg.set("storage", min_free="1MiB")
        cfg.data["webhooks"] = [{"url": f"http://127.0.0.1:{free_port()}/hook", "secret": "s" * 32}]
        port = cfg.address("submission", "listen_plain")[1]
        ballast = small_fs / "ballast"  # given back in step 3
        ballast.write_bytes(b"\0" * (3 << 20))
        daemon = Daemon(cfg)
        await asyncio.to_thread(daemon.start)
        acked: list[str] = []
        try:
            # 1. Fill the filesystem with mail until the daemon says 452.
            refusal = ""
            for n in range(400):
                stage, reply = await asyncio.to_thread(_submit, port, n)
                if stage == "ok":
                    acked.append(_queue_id(reply))
                    continue
                refusal = reply
                break
            assert refusal.startswith("452 4.3.1"), refusal
            assert acked, "nothing fitted before the disk was full"
            filler = await asyncio.to_thread(_fill_rest, small_fs)
            await asyncio.sleep(1.2)  # the daemon's free-space answer is kept for 1 s
            # Space freed meanwhile lets a message in, rightly stored and acknowledged (seen
            # once beside the full suite: a 250 below): take that too, so the disk stays full.
            await asyncio.to_thread(_fill_rest, small_fs)

            # 2. Full: every listener answers, the process lives.
            for n in range(400, 405):
                stage, reply = await asyncio.to_thread(_submit, port, n)
                assert stage != "ok" and reply.startswith("452 4.3.1"), (stage, reply)
            inbound = await asyncio.to_thread(_inbound_reply, inbound_port)
            assert inbound.startswith("452 4.3.1"), inbound
            secret = load_secrets(small_fs / "tracking.key")
            token = TokenCodec(secret).open_token(acked[0], 0)
            async with aiohttp.ClientSession() as http:
                for _ in range(3):
                    async with http.get(f"http://127.0.0.1:{tracking_port}/o/{token}.gif") as r:
                        assert r.status == 200  # the reader gets the pixel regardless

                async def scrape() -> str:
                    async with http.get(f"http://127.0.0.1:{admin_port}/metrics") as r:
                        assert r.status == 200
                        return await r.text()

                metrics = await eventually(
                    scrape, lambda m: _metric(m, "mtaserver_tracking_hits_dropped_total") >= 3,
                    timeout=30,
                )  # fmt: skip
            assert _metric(metrics, "mtaserver_tracking_hits_dropped_total") == 3, metrics
            assert daemon.proc is not None and daemon.proc.poll() is None, daemon.log()
            log = daemon.log()
            assert "Traceback" not in log and "event=fatal" not in log, log
            assert "event=tracking_write_failed" in log
            assert "event=disk_low" in log

            # 3. Space comes back: no restart needed.
            filler.unlink()
            ballast.unlink()

            async def attempt() -> tuple[str, str]:
                return await asyncio.to_thread(_submit, port, 999)

            stage, reply = await eventually(attempt, lambda r: r[0] == "ok", timeout=30)
            assert stage == "ok", reply
            acked.append(_queue_id(reply))
            sink.data_reply = None

            def delivered() -> set[str]:
                ids = set()
                for m in sink.messages:
                    found = re.search(rb"Message-ID: <([^@>]+)@", m.data, re.IGNORECASE)
                    if found:
                        ids.add(found.group(1).decode())
                return ids

            try:
                # A scheduler whose writes failed on the full disk is restarted by the
                # supervisor at least every 5 s (Backoff.full_maximum), then the retry
                # schedule (1 s) sends everything.
                await wait_for(lambda: set(acked) <= delivered(), timeout=60)
            except AssertionError:
                missing = set(acked) - delivered()
                raise AssertionError(f"not delivered: {missing}\n{daemon.log()[-6000:]}") from None
            log = daemon.log()
            assert "Traceback" not in log and "event=fatal" not in log, log
        finally:
            code = await asyncio.to_thread(daemon.stop)
        assert code == 0, daemon.log()

        # 4. A restart on a disk that is still full starts, says READY and answers 452.
        filler = await asyncio.to_thread(_fill_rest, small_fs)
        again = Daemon(cfg)
        await asyncio.to_thread(again.start)
        try:
            stage, reply = await asyncio.to_thread(_submit, port, 2000)
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
        assert "Traceback" not in again.log()
