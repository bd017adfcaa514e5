"""The submission listeners, served by ``loop.create_server`` in the daemon's own loop.

``listen`` (587-style: STARTTLS, required before MAIL/AUTH unless ``require_tls = false``),
``listen_tls`` (465-style: implicit TLS) and ``listen_plain`` (no TLS, so no AUTH: only
``trusted_networks`` clients can send). aiosmtpd's threaded ``Controller`` is not used.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass

from mtaserver.config.submission import SubmissionConfig
from mtaserver.errors import ConfigError
from mtaserver.log import get_logger, kv
from mtaserver.ratelimit import ConnectionLimiter
from mtaserver.smtpd import Admission, SessionRegistry
from mtaserver.submission.handler import SubmissionHandler
from mtaserver.submission.protocol import (
    ListenerSpec,
    SessionSettings,
    SubmissionSMTP,
    install_log_redaction,
)

log = get_logger("submission")


@dataclass(frozen=True, slots=True)
class Listener:
    spec: ListenerSpec
    server: asyncio.Server

    @property
    def address(self) -> tuple[str, int]:
        sockname = self.server.sockets[0].getsockname()
        return str(sockname[0]), int(sockname[1])

    @property
    def port(self) -> int:
        return self.address[1]


def session_settings(cfg: SubmissionConfig, hostname: str) -> SessionSettings:
    return SessionSettings(
        hostname=hostname,
        max_message_size=cfg.max_message_size,
        idle_timeout=cfg.idle_timeout,
        max_session_time=cfg.max_session_time,
        bare_newline=cfg.bare_newline,
        trusted_networks=cfg.trusted_networks,
        max_future_release=cfg.max_future_release,
    )


class SubmissionServer:
    """Owns the listening sockets; sessions are aiosmtpd protocols on the running loop."""

    def __init__(
        self,
        cfg: SubmissionConfig,
        *,
        hostname: str,
        handler: SubmissionHandler,
        tls_context: ssl.SSLContext | None,
        connections: Admission | None = None,
    ) -> None:
        """``connections`` counts the per-IP cap (default: this process's own counts)."""
        self.cfg = cfg
        self.handler = handler
        self.tls_context = tls_context
        self.settings = session_settings(cfg, hostname)
        self.connections: Admission = connections or ConnectionLimiter(cfg.max_connections_per_ip)
        self.listeners: list[Listener] = []
        self.sessions: SessionRegistry[SubmissionSMTP] = SessionRegistry()

    def reconfigure(self, cfg: SubmissionConfig, handler: SubmissionHandler) -> None:
        """Limits and policy from a reloaded config, for sessions that connect from now on.

        A session keeps the settings and handler it was created with, so one in progress
        finishes under the limits it started with. The per-IP cap applies at once (the
        counts are shared). Listening addresses are fixed for the life of the process.
        """
        self.cfg = cfg
        self.handler = handler
        self.settings = session_settings(cfg, self.settings.hostname)
        self.connections.max_per_ip = cfg.max_connections_per_ip

    def _factory(self, spec: ListenerSpec) -> SubmissionSMTP:
        return SubmissionSMTP(
            self.handler,
            listener=spec,
            settings=self.settings,
            connections=self.connections,
            tls_context=self.tls_context,
            sessions=self.sessions,
        )

    def plans(self) -> list[tuple[ListenerSpec, tuple[str, int], ssl.SSLContext | None]]:
        """The configured listeners: STARTTLS (587), implicit TLS (465), plain (trusted)."""
        cfg = self.cfg
        plans: list[tuple[ListenerSpec, tuple[str, int], ssl.SSLContext | None]] = []
        has_tls = self.tls_context is not None
        if cfg.listen is not None:
            spec = ListenerSpec("submission", starttls=has_tls, require_tls=cfg.require_tls)
            plans.append((spec, cfg.listen, None))
        if cfg.listen_tls is not None:
            if self.tls_context is None:
                raise ConfigError("submission.listen_tls needs a TLS certificate ([tls])")
            spec = ListenerSpec("submissions", implicit_tls=True, starttls=False)
            plans.append((spec, cfg.listen_tls, self.tls_context))
        if cfg.listen_plain is not None:
            spec = ListenerSpec("plain", starttls=False, require_tls=False)
            plans.append((spec, cfg.listen_plain, None))
        return plans

    async def start(self, *, reuse_port: bool = False) -> list[Listener]:
        """Bind every listener; ``reuse_port`` (SO_REUSEPORT) lets several worker
        processes bind the same addresses and the kernel spread connections among them."""
        install_log_redaction()
        plans = self.plans()
        loop = asyncio.get_running_loop()
        try:
            for spec, (host, port), ctx in plans:
                server = await loop.create_server(
                    lambda spec=spec: self._factory(spec),
                    host=host,
                    port=port,
                    ssl=ctx,
                    ssl_handshake_timeout=30.0 if ctx else None,
                    reuse_address=True,
                    reuse_port=reuse_port or None,
                    backlog=1024,
                )
                listener = Listener(spec, server)
                self.listeners.append(listener)
                log.info(kv(event="listening", listener=spec.name, address=listener.address,
                            tls="implicit" if spec.implicit_tls else
                            ("starttls" if spec.starttls else "none")))  # fmt: skip
        except BaseException:
            await self.close()
            raise
        return self.listeners

    def listener(self, name: str) -> Listener:
        for item in self.listeners:
            if item.spec.name == name:
                return item
        raise KeyError(name)

    def stop_accepting(self) -> None:
        """Close the listening sockets (sessions go on); :meth:`close` drains them."""
        for item in self.listeners:
            item.server.close()

    async def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, end idle sessions with 421, let transactions in progress reply.

        Sessions still open after ``timeout`` are cut; a message whose commit had not
        returned was not acknowledged, so the client retries it (never lost).
        """
        self.stop_accepting()
        for session in list(self.sessions):
            session.shutdown()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.sessions.wait_empty(), timeout)
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.close()
        for item in self.listeners:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(item.server.wait_closed(), 1.0)
        self.listeners = []
