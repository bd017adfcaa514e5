"""HTTP send API against SMTP submission, into the same server, in one invocation.

One server process (uvloop, as the daemon) runs the SMTP submission listener and the HTTP
send API over one database and one pipeline (cleanup → DKIM when ``--dkim`` → durable
queue, group commit, suppression checks on both paths). The client measures:

* ``(a)`` one ``POST /v3/mail/send`` with 1,000 personalizations into a stored Handlebars
  template: seconds to the ``202``, against the same 1,000 messages (composed beforehand)
  as 1,000 SMTP submissions over 50 sessions. Goal: API <= 2x SMTP.
* ``(b)`` single-message requests over 50 keep-alive connections: accepted messages/s,
  against ``bench.submission``'s SMTP client (50 sessions, ~2 KB messages) on the same
  server. Goal: API >= 0.8x SMTP.
* ``(c)`` the template engine: renders/s of a 4 KB template with 10 fields, against ten
  ``str.replace`` calls (``bench.template_render``). Goal: >= 20,000 renders/s.

    .venv/bin/python -m bench.api_send                 # best of 3 runs per side
    .venv/bin/python -m bench.api_send --dkim --messages 2000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiosmtplib
import uvloop

from bench.submission import drive, wait_stdin_closed
from bench.template_render import FIELDS, make_template, per_second

USER = "bench"
SENDER = "bench@example.com"
PERSONALIZATIONS = 1000
SESSIONS = 50


# -- the server (child process) ------------------------------------------------------------
async def serve(workdir: Path, dkim: bool) -> None:
    from mtaserver.api import ApiDeps, ApiServer, build_api_app
    from mtaserver.auth import Authenticator, AuthThrottle, hash_password
    from mtaserver.clock import SystemClock
    from mtaserver.config.reader import Reader
    from mtaserver.config.submission import parse
    from mtaserver.dkim import DkimSigner, KeySet
    from mtaserver.dkim import keys as K
    from mtaserver.pipeline import Pipeline
    from mtaserver.sendapi import Limits
    from mtaserver.storage.sqlite.apikeys import ApiKeyStore
    from mtaserver.storage.sqlite.db import Database
    from mtaserver.storage.sqlite.idempotency import ApiIntake
    from mtaserver.storage.sqlite.queue import Spool, new_queue_id
    from mtaserver.storage.sqlite.suppressions import SuppressionStore
    from mtaserver.storage.sqlite.templates import TemplateStore
    from mtaserver.storage.sqlite.users import UserStore
    from mtaserver.submission import SubmissionHandler, SubmissionServer

    cfg = parse(Reader({
        "listen_plain": "127.0.0.1:0", "trusted_networks": ["127.0.0.0/8"],
        "max_connections_per_ip": 10000,
    }, "bench.toml", "submission"))  # fmt: skip
    db = Database(workdir / "bench.db")
    await db.open()
    clock = SystemClock()
    users = UserStore(db)
    await users.add(USER, hash_password("bench-password-123"), ["example.com"])
    signer = None
    if dkim:
        path = workdir / "dkim.pem"
        K.write_private_key(path, K.generate_key(K.Algorithm.RSA, 2048))
        key = K.load_key(path, domain="example.com", selector="s1", algorithm=K.Algorithm.RSA)
        signer = DkimSigner(KeySet.build([key]), clock)
    spool = Spool(db)
    suppressions = SuppressionStore(db)
    pipeline = Pipeline(spool=spool, new_queue_id=new_queue_id, hostname="bench.test",
                        max_header_size=cfg.max_header_size, signer=signer)  # fmt: skip
    auth = Authenticator(users)
    handler = SubmissionHandler(
        submitter=pipeline, authenticator=auth, throttle=AuthThrottle(cfg.auth, clock),
        clock=clock, max_recipients=cfg.max_recipients, max_header_size=cfg.max_header_size,
        suppressions=suppressions,
    )  # fmt: skip
    smtp = SubmissionServer(cfg, hostname="bench.test", handler=handler, tls_context=None)
    await smtp.start()
    keys = ApiKeyStore(db)
    _, key_text = await keys.create(USER, frozenset({"mail.send"}))
    templates = TemplateStore(db, clock)
    hbs, _ = make_template()
    info = await templates.put("bench", "Hello {{field0}}", hbs, "Hi {{field1}}, {{field2}}")
    deps = ApiDeps(
        keys=keys, users=users, suppressions=suppressions, preparer=lambda: pipeline,
        intake=ApiIntake(db, spool), batches=spool, templates=templates, clock=clock,
        new_queue_id=new_queue_id, limits=lambda: Limits(), idempotency_window=lambda: 86400.0,
        hostname="bench.test",
    )  # fmt: skip
    api = ApiServer(build_api_app(deps))
    await api.start("127.0.0.1", 0)
    print(f"READY {smtp.listener('plain').port} {api.port} {key_text} {info.template_id}",
          flush=True)  # fmt: skip
    try:
        await wait_stdin_closed()
    finally:
        await api.stop()
        await smtp.close(1.0)
        auth.close()
        await db.close()


@dataclass(frozen=True)
class Server:
    smtp_port: int
    api_port: int
    key: str
    template_id: str
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/v3/mail/send"

    def queued(self) -> int:
        conn = sqlite3.connect(self.workdir / "bench.db")
        try:
            return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])
        finally:
            conn.close()


@contextlib.contextmanager
def server_process(workdir: Path, dkim: bool) -> Iterator[Server]:
    args = [sys.executable, "-m", "bench.api_send", "--serve", "--dir", str(workdir)]
    proc = subprocess.Popen(args + (["--dkim"] if dkim else []), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().split()
        if not line or line[0] != "READY":
            raise RuntimeError("the bench server did not start")
        yield Server(int(line[1]), int(line[2]), line[3], line[4], workdir)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the client ----------------------------------------------------------------------------
def data_for(i: int) -> dict[str, Any]:
    return {**{f: f"Value & {f} <{i}>" for f in FIELDS}, "items": ["a", "b", str(i)]}


def big_request(template_id: str, n: int) -> bytes:
    people = [{"to": [{"email": f"r{i}@dest.example"}], "dynamic_template_data": data_for(i)}
              for i in range(n)]  # fmt: skip
    body = {"personalizations": people, "from": {"email": SENDER}, "template_id": template_id}
    return json.dumps(body).encode()


def composed(template_id: str, n: int) -> list[tuple[str, bytes]]:
    """The messages of ``big_request`` as an SMTP client would send them (rendered here)."""
    from mtaserver.render import TemplateCache
    from mtaserver.sendapi import Limits, StoredTemplate, compose, parse_mail_send

    hbs, _ = make_template()
    template = StoredTemplate("Hello {{field0}}", hbs, "Hi {{field1}}, {{field2}}")
    raw = big_request(template_id, n)
    req = parse_mail_send(json.loads(raw), now=int(time.time()), limits=Limits(),
                          body_size=len(raw)).request  # fmt: skip
    assert req is not None
    out = compose(req, domain="client.test", cache=TemplateCache(), template=template)
    return [(m.recipients[0], m.message) for m in out.messages]


async def smtp_batch(port: int, messages: list[tuple[str, bytes]], sessions: int) -> float:
    todo = list(reversed(messages))

    async def one() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=120)
        async with client:
            while todo:
                rcpt, data = todo.pop()
                errors, reply = await client.sendmail(SENDER, [rcpt], data)
                if errors:
                    raise RuntimeError(f"refused: {errors} {reply}")

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(sessions)))
    return time.perf_counter() - started


async def api_big(server: Server, body: bytes) -> float:
    headers = {"Authorization": f"Bearer {server.key}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as s:
        started = time.perf_counter()
        async with s.post(server.url, data=body, headers=headers) as r:
            await r.read()
            elapsed = time.perf_counter() - started
            if r.status != 202:
                raise RuntimeError(f"API answered {r.status}: {await r.text()}")
    return elapsed


def single_body(i: int, size: int) -> bytes:
    line = "The quick brown fox jumps over the lazy dog, again and again and again.\n"
    return json.dumps({
        "personalizations": [{"to": [{"email": f"r{i}@dest.example"}]}],
        "from": {"email": SENDER, "name": "Bench"}, "subject": f"bench {i}",
        "content": [{"type": "text/plain", "value": line * max(1, size // len(line))}],
    }).encode()  # fmt: skip


async def api_singles(server: Server, connections: int, total: int, size: int) -> float:
    bodies = [single_body(i, size) for i in range(8)]
    headers = {"Authorization": f"Bearer {server.key}", "Content-Type": "application/json"}
    remaining = total
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    async with aiohttp.ClientSession(connector=connector) as s:

        async def one(n: int) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                async with s.post(server.url, data=bodies[n % 8], headers=headers) as r:
                    await r.read()
                    if r.status != 202:
                        raise RuntimeError(f"API answered {r.status}: {await r.text()}")

        await api_big(server, bodies[0])  # every connection warm before the clock starts
        started = time.perf_counter()
        await asyncio.gather(*(one(n) for n in range(connections)))
        return time.perf_counter() - started


@dataclass
class Figures:
    big_api: float = float("inf")  # seconds to 202
    big_smtp: float = float("inf")  # seconds for the same messages over SMTP
    api_rate: float = 0.0  # single-message requests/s
    smtp_rate: float = 0.0  # bench.submission's messages/s


async def measure(server: Server, args: argparse.Namespace, f: Figures) -> None:
    body = big_request(server.template_id, PERSONALIZATIONS)
    messages = composed(server.template_id, PERSONALIZATIONS)
    await api_big(server, big_request(server.template_id, 5))  # warm the template cache
    for _ in range(args.repeat):  # alternate, so load from elsewhere hits both sides
        f.big_smtp = min(f.big_smtp, await smtp_batch(server.smtp_port, messages, SESSIONS))
        f.big_api = min(f.big_api, await api_big(server, body))
        seconds = await drive(server.smtp_port, tls=None, sessions=SESSIONS,
                              total=args.messages, size=args.size)  # fmt: skip
        f.smtp_rate = max(f.smtp_rate, args.messages / seconds)
        seconds = await api_singles(server, SESSIONS, args.messages, args.size)
        f.api_rate = max(f.api_rate, args.messages / seconds)


def render_rates() -> tuple[float, float]:
    """(engine renders/s, ten str.replace/s) for bench.template_render's 4 KB template."""
    from mtaserver.render import TemplateCache

    hbs, plain = make_template()
    template = TemplateCache().get(hbs)
    datasets = [data_for(i) for i in range(64)]
    subs = [{f"-{f}-": f"Value & {f} <{i}>" for f in FIELDS} for i in range(64)]

    def engine(i: int) -> object:
        return template.render(datasets[i % 64])

    def replace(i: int) -> object:
        text = plain
        for k, v in subs[i % 64].items():
            text = text.replace(k, v)
        return text

    return per_second(engine, 20000), per_second(replace, 20000)


def report(f: Figures, engine: float, base: float, args: argparse.Namespace) -> str:
    a = f.big_api / f.big_smtp
    b = f.api_rate / f.smtp_rate
    ok = {True: "ok", False: "MISSED"}
    return "\n".join([
        f"DKIM {'on' if args.dkim else 'off'}; best of {args.repeat}",
        f"(a) {PERSONALIZATIONS} personalizations, one request: {f.big_api:.2f}s to 202; "
        f"as {PERSONALIZATIONS} SMTP submissions over {SESSIONS} sessions: {f.big_smtp:.2f}s"
        f"  -> {a:.2f}x  (goal <= 2x: {ok[a <= 2]})",
        f"(b) single-message requests over {SESSIONS} connections: {f.api_rate:.0f} msg/s; "
        f"SMTP (bench.submission, {SESSIONS} sessions): {f.smtp_rate:.0f} msg/s"
        f"  -> {b:.2f}x  (goal >= 0.8x: {ok[b >= 0.8]})",
        f"(c) template render, 4 KB / 10 fields: {engine:.0f} renders/s; str.replace x10: "
        f"{base:.0f}/s  -> {engine / base:.2f}x  (goal >= 20000/s: {ok[engine >= 20000]})",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> Figures:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--messages", type=int, default=3000, help="messages per (b) run")
    p.add_argument("--size", type=int, default=2048, help="(b) message size in bytes")
    p.add_argument("--repeat", type=int, default=3, help="runs per side; the best counts")
    p.add_argument("--dkim", action="store_true", help="sign with a 2048-bit RSA key")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--dir", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        logging.getLogger("mail.log").setLevel(logging.ERROR)  # per-command chatter
        uvloop.run(serve(args.dir, args.dkim))
        return Figures()
    figures = Figures()
    with (
        tempfile.TemporaryDirectory(prefix="bench-api-") as tmp,
        server_process(Path(tmp), args.dkim) as server,
    ):
        uvloop.run(measure(server, args, figures))
        expected = args.repeat * (2 * PERSONALIZATIONS + 2 * args.messages + 1) + 5
        if server.queued() != expected:
            raise RuntimeError(f"{server.queued()} queued, expected {expected}")
    engine, base = render_rates()
    print(report(figures, engine, base, args))
    return figures


if __name__ == "__main__":
    main()
