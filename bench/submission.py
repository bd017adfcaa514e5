"""Submission throughput: accepted messages/s for many concurrent sessions.

Two servers are measured in the same invocation through the same client (aiosmtplib,
``--sessions`` concurrent sessions, each sending messages back to back):

* ``sink``: a minimal aiosmtpd server whose DATA handler discards the message;
* ``mtaserver``: the submission listeners with the full policy, cleanup, and a durable
  queue (SQLite WAL, ``synchronous=FULL``, group commit) — 250 only after the commit.

Each runs in its own process on uvloop, as the daemon does. Two modes: ``plain`` (trusted
network, no TLS, no AUTH) and ``tls+auth`` (implicit TLS, AUTH PLAIN once per session). The
result is the ratio mtaserver/sink per mode; the target is at least 0.5.

    .venv/bin/python -m bench.submission          # 50 sessions, 3000 messages, best of 3
    .venv/bin/python -m bench.submission --sessions 10 --messages 200
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosmtplib
import trustme
import uvloop

USER = "bench"
PASSWORD = "bench-password-123"
SENDER = "bench@example.com"


# -- servers (child processes) -----------------------------------------------------------------
async def serve_ours(workdir: Path) -> None:
    from mtaserver.auth import Authenticator, AuthThrottle, hash_password
    from mtaserver.clock import SystemClock
    from mtaserver.config.reader import Reader
    from mtaserver.config.submission import parse
    from mtaserver.pipeline import Pipeline
    from mtaserver.storage.sqlite.db import Database
    from mtaserver.storage.sqlite.queue import Spool, new_queue_id
    from mtaserver.storage.sqlite.users import UserStore
    from mtaserver.submission import SubmissionHandler, SubmissionServer

    cfg = parse(Reader({
        "listen_tls": "127.0.0.1:0", "listen_plain": "127.0.0.1:0",
        "trusted_networks": ["127.0.0.0/8"], "max_connections_per_ip": 10000,
    }, "bench.toml", "submission"))  # fmt: skip
    db = Database(workdir / "bench.db")
    await db.open()
    users = UserStore(db)
    await users.add(USER, hash_password(PASSWORD), ["example.com"])
    clock = SystemClock()
    auth = Authenticator(users)
    handler = SubmissionHandler(
        submitter=Pipeline(spool=Spool(db), new_queue_id=new_queue_id, hostname="bench.test",
                           max_header_size=cfg.max_header_size),
        authenticator=auth, throttle=AuthThrottle(cfg.auth, clock), clock=clock,
        max_recipients=cfg.max_recipients, max_header_size=cfg.max_header_size,
    )  # fmt: skip
    server = SubmissionServer(cfg, hostname="bench.test", handler=handler,
                              tls_context=server_context(workdir))  # fmt: skip
    await server.start()
    print(f"READY {server.listener('plain').port} {server.listener('submissions').port}",
          flush=True)  # fmt: skip
    try:
        await wait_stdin_closed()
    finally:
        await server.close(1.0)
        auth.close()
        await db.close()


async def serve_sink(workdir: Path) -> None:
    from aiosmtpd.smtp import SMTP, AuthResult

    class Discard:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "250 OK"

    def accept_all(*args: Any) -> AuthResult:
        return AuthResult(success=True)

    loop = asyncio.get_running_loop()
    handler = Discard()

    def plain() -> SMTP:
        return SMTP(handler, hostname="sink.test", enable_SMTPUTF8=True)

    def tls() -> SMTP:
        return SMTP(handler, hostname="sink.test", enable_SMTPUTF8=True,
                    authenticator=accept_all, auth_require_tls=False)  # fmt: skip

    s1 = await loop.create_server(plain, "127.0.0.1", 0)
    s2 = await loop.create_server(tls, "127.0.0.1", 0, ssl=server_context(workdir))
    print(f"READY {s1.sockets[0].getsockname()[1]} {s2.sockets[0].getsockname()[1]}", flush=True)
    try:
        await wait_stdin_closed()
    finally:
        s1.close()
        s2.close()


def server_context(workdir: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(workdir / "cert.pem"), str(workdir / "key.pem"))
    return ctx


async def wait_stdin_closed() -> None:
    await asyncio.to_thread(sys.stdin.read)


# -- the client ----------------------------------------------------------------------------
@dataclass
class Result:
    server: str
    mode: str
    messages: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def message(size: int, i: int) -> bytes:
    head = (
        f"From: Bench <{SENDER}>\r\nTo: <r{i}@dest.example>\r\nSubject: bench {i}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog, again and again and again.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def drive(port: int, *, tls: ssl.SSLContext | None, sessions: int, total: int,
                size: int) -> float:  # fmt: skip
    remaining = total
    data = [message(size, i) for i in range(8)]

    async def one(n: int) -> None:
        nonlocal remaining
        client = aiosmtplib.SMTP(hostname="localhost", port=port, use_tls=tls is not None,
                                 start_tls=False, tls_context=tls, timeout=60)  # fmt: skip
        async with client:
            if tls is not None:
                await client.login(USER, PASSWORD)
            while remaining > 0:
                remaining -= 1
                errors, reply = await client.sendmail(SENDER, [f"r{n}@dest.example"],
                                                      data[n % len(data)])  # fmt: skip
                if errors or not reply.startswith(("2.0.0", "OK", "Ok")):
                    raise RuntimeError(f"refused: {errors} {reply}")

    started = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(sessions)))
    return time.perf_counter() - started


@contextlib.contextmanager
def server_process(kind: str, workdir: Path):  # type: ignore[no-untyped-def]
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.submission", "--serve", kind, "--dir", str(workdir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if not line or line[0] != "READY":
            raise RuntimeError(f"{kind} server did not start")
        yield int(line[1]), int(line[2])
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def queued(workdir: Path) -> int:
    conn = sqlite3.connect(workdir / "bench.db")
    try:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
    finally:
        conn.close()


def run(sessions: int, total: int, size: int, repeat: int = 1) -> list[Result]:
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="bench-submission-") as tmp:
        root = Path(tmp)
        ca = trustme.CA()
        cert = ca.issue_cert("localhost", "127.0.0.1")
        cert.private_key_pem.write_to_path(str(root / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
        client_ctx = ssl.create_default_context()
        ca.configure_trust(client_ctx)
        plan = [
            (mode, n, kind)
            for mode in ("plain", "tls+auth")
            for n in range(repeat)
            for kind in ("sink", "ours")
        ]
        for mode, n, kind in plan:
            workdir = root / f"{kind}-{mode.replace('+', '-')}-{n}"
            workdir.mkdir()
            for name in ("cert.pem", "key.pem"):
                os.link(root / name, workdir / name)
            with server_process(kind, workdir) as (plain_port, tls_port):
                tls = client_ctx if mode == "tls+auth" else None
                port = tls_port if tls else plain_port
                seconds = uvloop.run(
                    drive(port, tls=tls, sessions=sessions, total=total, size=size)
                )
            if kind == "ours" and queued(workdir) != total:
                raise RuntimeError(f"{queued(workdir)} queued, expected {total}")
            name = "mtaserver" if kind == "ours" else "sink"
            results.append(Result(name, mode, total, seconds))
    return results


def report(results: list[Result], sessions: int, size: int) -> str:
    lines = [f"{len(results) and results[0].messages} messages of ~{size} B, {sessions} sessions",
             f"{'mode':<10} {'server':<10} {'msg/s':>9} {'ratio':>7}"]  # fmt: skip
    for mode in ("plain", "tls+auth"):
        by: dict[str, Result] = {}
        for r in results:  # best of the repeats: load from elsewhere only ever slows a run
            if r.mode == mode and (r.server not in by or r.rate > by[r.server].rate):
                by[r.server] = r
        sink, ours = by["sink"], by["mtaserver"]
        lines.append(f"{mode:<10} {'sink':<10} {sink.rate:>9.0f}")
        ratio = ours.rate / sink.rate
        verdict = "ok" if ratio >= 0.5 else "BELOW TARGET 0.5"
        lines.append(f"{mode:<10} {'mtaserver':<10} {ours.rate:>9.0f} {ratio:>6.2f}x  {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Result]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sessions", type=int, default=50)
    p.add_argument("--messages", type=int, default=3000)
    p.add_argument("--size", type=int, default=2048, help="message size in bytes")
    p.add_argument("--repeat", type=int, default=3, help="runs per server and mode; best counts")
    p.add_argument("--serve", choices=("ours", "sink"), help=argparse.SUPPRESS)
    p.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        logging.getLogger("mail.log").setLevel(logging.ERROR)  # per-command chatter
        uvloop.run(serve_ours(args.dir) if args.serve == "ours" else serve_sink(args.dir))
        return []
    results = run(args.sessions, args.messages, args.size, args.repeat)
    print(report(results, args.sessions, args.size))
    return results


if __name__ == "__main__":
    main()
