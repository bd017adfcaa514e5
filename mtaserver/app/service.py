"""What ``app`` runs: every stage as a :class:`Service` with one lifecycle.

``start`` binds sockets (before READY=1), ``run`` is the long-lived body (supervised,
restarted on a crash), ``drain`` stops accepting and lets work in progress finish,
``reload`` takes a new config on SIGHUP. A :class:`ListeningService` also closes its
listening sockets first (``stop_accepting``), before the daemon says STOPPING=1.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from mtaserver.config import Config


class Service(Protocol):
    @property
    def name(self) -> str: ...

    async def start(self) -> None: ...

    async def run(self) -> None: ...

    async def drain(self, timeout: float) -> None: ...

    async def reload(self, config: Config) -> None: ...


@dataclass(frozen=True)
class SimpleService:
    """Adapts plain callables to :class:`Service` for small stages."""

    name: str
    on_start: Callable[[], Awaitable[None]] | None = None
    on_run: Callable[[], Awaitable[None]] | None = None
    on_drain: Callable[[float], Awaitable[None]] | None = None
    on_reload: Callable[[Config], Awaitable[None]] | None = None

    async def start(self) -> None:
        if self.on_start:
            await self.on_start()

    async def run(self) -> None:
        if self.on_run:
            await self.on_run()

    async def drain(self, timeout: float) -> None:
        if self.on_drain:
            await self.on_drain(timeout)

    async def reload(self, config: Config) -> None:
        if self.on_reload:
            await self.on_reload(config)


@dataclass(frozen=True)
class ListeningService(SimpleService):
    """A stage with listening sockets: closed before STOPPING=1, so that a client connecting
    after systemd saw it is refused rather than left in the backlog until the drain."""

    on_stop_accepting: Callable[[], Awaitable[None]] | None = None

    async def stop_accepting(self) -> None:
        if self.on_stop_accepting:
            await self.on_stop_accepting()
