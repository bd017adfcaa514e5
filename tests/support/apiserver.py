"""A running daemon with the HTTP send API, a DKIM key, fake DNS and an MX sink.

    async with ApiDaemon(tmp_path) as api:
        client = SendGridAPIClient(api.key, host=api.base_url)   # SendGrid's own SDK
        ...
        await api.wait_messages(3)                               # arrived at the MX
        api.dkim_ok(api.sink.messages[0].data)

The daemon is a real process (``Daemon``); the user ``app`` owns ``example.com``, and
``api.key`` is an API key with every scope created with ``mtaserver apikey create``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import TracebackType
from typing import Any

from mtaserver.dkim import keys as K
from tests.support.daemon import Daemon, TestConfig, free_port
from tests.support.dkimtools import dkim_entries, dkimpy_verify, make_key, publish
from tests.support.dnsserver import DnsServer
from tests.support.mxsink import SinkGroup, SinkState, wait_for


class ApiDaemon:
    def __init__(
        self, tmp_path: Path, *, api: dict[str, Any] | None = None, tls: bool = False
    ) -> None:
        self.tmp = tmp_path
        self.api_settings = api or {}
        self.dns = DnsServer()
        self.sinks = SinkGroup(["127.0.0.2"])
        self.cfg = TestConfig(tmp_path, tls=tls)  # tls: also the AUTH submission listeners
        self.daemon: Daemon | None = None
        self.key = ""
        self.keys: list[K.DkimKey] = []

    @property
    def sink(self) -> SinkState:
        return self.sinks["127.0.0.2"]

    @property
    def base_url(self) -> str:
        host, port = self.cfg.address("api", "listen")
        return f"http://{host}:{port}"

    async def __aenter__(self) -> ApiDaemon:
        self.dns.start()
        self.keys = [make_key(self.tmp, "example.com", "s1", K.Algorithm.RSA)]
        publish(self.dns, self.keys)
        await self.sinks.start()
        cfg = self.cfg
        cfg.set("delivery", relay_host=f"127.0.0.2:{self.sinks.port}", tls="none",
                nameservers=[self.dns.nameserver])  # fmt: skip
        cfg.set("shaping", poll_interval="20ms")
        cfg.set("api", listen=f"127.0.0.1:{free_port()}", **self.api_settings)
        cfg.data["dkim"] = dkim_entries(self.keys, {"s1"})
        await self.start()
        return self

    async def start(self) -> None:
        self.daemon = Daemon(self.cfg)
        await asyncio.to_thread(self.daemon.start)
        if not self.key:
            self.key = await self.new_key("all")

    async def new_key(self, scopes: str, user: str = "app") -> str:
        assert self.daemon is not None
        if user == "app" and not self.key:
            out = await asyncio.to_thread(
                self.daemon.cli, "user", "add", "app", "--domain", "example.com",
                "--password-stdin", input=b"a long password\n",
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
        out = await asyncio.to_thread(
            self.daemon.cli, "apikey", "create", "--user", user, "--scopes", scopes
        )
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    async def stop(self) -> None:
        if self.daemon is not None:
            await asyncio.to_thread(self.daemon.stop)
            self.daemon = None

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if self.daemon is not None:
                if et is not None:
                    print(self.daemon.log()[-20000:])
                await self.stop()
        finally:
            await self.sinks.stop()
            self.dns.stop()

    async def wait_messages(self, n: int, timeout: float = 30.0) -> None:
        await wait_for(lambda: len(self.sink.messages) >= n, timeout)

    def dkim_ok(self, data: bytes) -> bool:
        return dkimpy_verify(data, self.keys) == [True]

    def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """Read the daemon's database, SQLite or PostgreSQL (``TestConfig.query``)."""
        return self.cfg.query(sql, *args)

    def queued(self) -> int:
        return int(self.query("SELECT count(*) FROM messages")[0][0])
