"""A running submission server on 127.0.0.1 (real sockets, real TLS, real database)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sqlite3
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from mtaserver.auth import Authenticator, AuthThrottle, hash_password
from mtaserver.clock import Clock, SystemClock
from mtaserver.config.oauth import OAuthConfig
from mtaserver.config.reader import Reader
from mtaserver.config.submission import AuthThrottleConfig, SubmissionConfig
from mtaserver.config.submission import parse as parse_submission
from mtaserver.oauth import BearerAuthenticator, TokenVerifier
from mtaserver.pipeline import Pipeline
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.storage.sqlite.users import UserStore
from mtaserver.submission import RateLimiter, SubmissionHandler, SubmissionServer, Suppressions

PASSWORD = "correct horse battery staple"
HOSTNAME = "mta.test"


def config(**overrides: Any) -> SubmissionConfig:
    table: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "listen_tls": "127.0.0.1:0",
        "listen_plain": "127.0.0.1:0",
    }
    table.update({k: v for k, v in overrides.items() if v is not None})
    return parse_submission(Reader(table, "test.toml", "submission"))


@dataclass
class Env:
    server: SubmissionServer
    db: Database
    spool: Spool
    users: UserStore
    ca: trustme.CA
    db_path: Path
    suppressions: SuppressionStore | None = None

    def port(self, name: str) -> int:
        return self.server.listener(name).port

    def client_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        self.ca.configure_trust(ctx)
        return ctx

    def messages(self) -> list[sqlite3.Row]:
        """Read the queue from a separate connection (what a crash would leave)."""
        conn = sqlite3.connect(self.db_path)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute("SELECT * FROM messages ORDER BY received_at").fetchall()
        finally:
            conn.close()

    def recipients(self, queue_id: str) -> list[str]:
        conn = sqlite3.connect(self.db_path)
        try:
            rows = conn.execute(
                "SELECT address FROM recipients WHERE queue_id=? ORDER BY idx", (queue_id,)
            ).fetchall()
            return [r[0] for r in rows]
        finally:
            conn.close()

    def events(self, type_: str) -> list[sqlite3.Row]:
        conn = sqlite3.connect(self.db_path)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(
                "SELECT * FROM events WHERE type=? ORDER BY id", (type_,)
            ).fetchall()
        finally:
            conn.close()


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    *,
    clock: Clock | None = None,
    throttle: AuthThrottleConfig | None = None,
    suppressions: Suppressions | None = None,
    real_suppressions: bool = False,
    drop_suppressed: bool = False,
    user_burst: float = 5.0,
    pipeline_kwargs: dict[str, Any] | None = None,
    oauth: OAuthConfig | None = None,
    **overrides: Any,
) -> AsyncIterator[Env]:
    clock = clock or SystemClock()
    cfg = config(**overrides)
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    db_path = tmp_path / "mta.db"
    db = Database(db_path)
    await db.open()
    spool = Spool(db)
    users = UserStore(db)
    await users.add("alice", hash_password(PASSWORD), ["example.com", "alice.example"])
    await users.add("bob", hash_password(PASSWORD), ["bob.example"])
    authenticator = Authenticator(users)
    store = SuppressionStore(db) if real_suppressions else None
    if store is not None:
        suppressions = store
    pipeline = Pipeline(
        spool=spool,
        new_queue_id=new_queue_id,
        hostname=HOSTNAME,
        max_header_size=cfg.max_header_size,
        **(pipeline_kwargs or {}),
    )
    rate = RateLimiter(cfg.user_rate, user_burst, clock) if cfg.user_rate is not None else None
    bearer = BearerAuthenticator(TokenVerifier(oauth, clock), users) if oauth else None
    handler = SubmissionHandler(
        submitter=pipeline,
        authenticator=authenticator,
        throttle=AuthThrottle(throttle or cfg.auth, clock),
        clock=clock,
        max_recipients=cfg.max_recipients,
        max_header_size=cfg.max_header_size,
        user_rate=rate,
        suppressions=suppressions,
        drop_suppressed=drop_suppressed,
        bearer=bearer,
    )
    server = SubmissionServer(cfg, hostname=HOSTNAME, handler=handler, tls_context=server_ctx)
    await server.start()
    try:
        yield Env(server, db, spool, users, ca, db_path, store)
    finally:
        await server.close()
        authenticator.close()
        if bearer is not None:
            await bearer.aclose()
        await db.close()


def with_config(cfg: SubmissionConfig, **changes: Any) -> SubmissionConfig:
    return dataclasses.replace(cfg, **changes)


class RawClient:
    """Bytes on the wire, replies parsed: for what real clients refuse to send."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, port: int, ssl_ctx: ssl.SSLContext | None = None) -> RawClient:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1", port, ssl=ssl_ctx, server_hostname="localhost" if ssl_ctx else None
            ),
            10,
        )
        return cls(reader, writer)

    async def reply(self, timeout: float = 10.0) -> str:
        """One complete (possibly multi-line) reply; '' on EOF."""
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
            if not line:
                return "\n".join(lines)
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(text)
            if len(text) < 4 or text[3] != "-":
                return "\n".join(lines)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def cmd(self, line: str | bytes) -> str:
        raw = line.encode() if isinstance(line, str) else line
        await self.send(raw + b"\r\n")
        return await self.reply()

    async def starttls(self, ctx: ssl.SSLContext) -> None:
        await self.writer.start_tls(ctx, server_hostname="localhost")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def plain_auth(user: str = "alice", password: str = PASSWORD) -> str:
    import base64

    return base64.b64encode(f"\0{user}\0{password}".encode()).decode()
