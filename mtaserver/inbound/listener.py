"""The port-25 listener for the bounce domain: who may send what, on the hardened session."""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable, Sequence
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mtaserver.clock import Clock
from mtaserver.config.inbound import InboundConfig
from mtaserver.diskspace import declared_size
from mtaserver.errors import StorageError
from mtaserver.inbound.ports import SpaceCheck, Unsubscribes
from mtaserver.log import get_logger, kv
from mtaserver.ratelimit import ConnectionLimiter, RateLimiter, Refusal
from mtaserver.smtpd import Guard, GuardedSMTP
from mtaserver.verp import Verp

log = get_logger("inbound")

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
CONNECTION_BURST = 10.0  # new connections an address may open at once, then the rate


class InboundHandler:
    """aiosmtpd handler: who may send what to the bounce domain."""

    def __init__(
        self,
        cfg: InboundConfig,
        verp: Verp,
        processor: Callable[[bytes, Sequence[str]], Any],
        unsubscribes: Unsubscribes | None = None,
        space: SpaceCheck | None = None,
    ) -> None:
        self.cfg = cfg
        self.verp = verp
        self.process = processor
        self.unsubscribes = unsubscribes
        self.space = space  # free space where the queue lives: 452 at MAIL when low
        self.complaints = (cfg.complaints_address or "").lower()

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        if _CONTROL_RE.search(hostname) or len(hostname) > 255:
            return ["501 5.5.4 Invalid domain name"]
        session.host_name = hostname
        # No AUTH on this listener, not even the empty "AUTH" aiosmtpd offers after STARTTLS.
        return [r for r in responses if not r[4:].upper().startswith("AUTH")]

    async def handle_HELO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str
    ) -> str:
        if _CONTROL_RE.search(hostname) or len(hostname) > 255:
            return "501 5.5.4 Invalid domain name"
        session.host_name = hostname
        return f"250 {server.hostname}"

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if _CONTROL_RE.search(address) or len(address) > 320:
            return "501 5.1.7 Bad sender address syntax"
        if self.space is not None and self.space.low(declared_size(mail_options)):
            return "452 4.3.1 Insufficient system storage"
        envelope.mail_from = address  # "" (the null sender) is what bounces use
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if _CONTROL_RE.search(address) or len(address) > 320:
            return "501 5.1.3 Bad recipient address syntax"
        if len(envelope.rcpt_tos) >= self.cfg.max_recipients:
            return "452 4.5.3 Too many recipients"
        addr = address.strip().lower()
        if not (
            addr == self.complaints
            or self.verp.parse(addr) is not None
            or (self.unsubscribes is not None and self.unsubscribes.accepts(addr))
        ):
            log.info(kv(event="inbound_rcpt_refused", client_ip=_peer(session), rcpt=f"<{addr}>"))
            return "550 5.7.1 Recipient not accepted here: this host takes bounces only"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        if len(raw) > self.cfg.max_message_size:
            return "552 5.3.4 Message too big"
        if b"\x00" in raw:
            return "554 5.6.0 Message contains NUL characters"
        rcpts = list(envelope.rcpt_tos)
        unsub = self.unsubscribes
        to_unsub = [r for r in rcpts if unsub is not None and unsub.accepts(r)]
        rest = [r for r in rcpts if r not in to_unsub]
        reply = "250 2.0.0 OK"
        if unsub is not None and to_unsub:
            result = await unsub.process(raw, _peer(session))
            log.info(kv(event="inbound_accepted", client_ip=_peer(session), size=len(raw),
                        outcome=result.outcome))  # fmt: skip
            # Alone, the unsubscribe request's own answer (a refusal says why); beside
            # bounce recipients, those decide (the message is accepted for them).
            reply = result.reply
        if rest:
            outcome = await self.process(raw, rest)
            log.info(kv(event="inbound_accepted", client_ip=_peer(session), size=len(raw),
                        outcome=getattr(outcome, "kind", "-")))  # fmt: skip
            reply = "250 2.0.0 OK"
        return reply

    async def handle_exception(self, error: Exception) -> str:
        if isinstance(error, StorageError) and error.full:
            log.error(kv(event="inbound_storage_full", error=str(error)))
            return "452 4.3.1 Insufficient system storage"
        log.error(kv(event="inbound_handler_error", error=type(error).__name__))
        return "451 4.3.0 Temporary local problem, try again later"


def _peer(session: Session) -> str:
    peer = session.peer
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "-"


REFUSALS = (
    (Refusal.TOTAL, "421 4.3.2 Too many connections, try again later"),
    (Refusal.PER_IP, "421 4.7.0 Too many connections from your address"),
    (Refusal.RATE, "421 4.7.0 Connection rate limit exceeded, slow down"),
)


class InboundSMTP(GuardedSMTP):
    """One session on port 25: the shared hardened session, without enhanced-code rewriting
    (the handler's replies carry their own) and without AUTH."""

    log = log


class InboundServer:
    """Binds the listener; ``stop`` closes it and waits for open sessions to finish."""

    def __init__(
        self,
        cfg: InboundConfig,
        handler: InboundHandler,
        clock: Clock,
        hostname: str,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.cfg = cfg
        self.handler = handler
        self.hostname = hostname
        self.tls_context = tls_context
        self.limiter = ConnectionLimiter(
            cfg.max_connections_per_ip,
            max_total=cfg.max_connections,
            rate=RateLimiter(cfg.connection_rate_per_ip, CONNECTION_BURST, clock),
        )
        # The idle timer is the command timeout (reset while DATA streams); the whole
        # session is capped so that a slow sender cannot hold a slot for ever.
        self.guard = Guard(
            max_message_size=cfg.max_message_size,
            idle_timeout=cfg.command_timeout,
            max_session_time=cfg.data_timeout + 10 * cfg.command_timeout,
            enhanced_codes=False,
            refusals=REFUSALS,
        )
        self._server: asyncio.Server | None = None

    def _factory(self) -> InboundSMTP:
        return InboundSMTP(
            self.handler,
            guard=self.guard,
            connections=self.limiter,
            listener_name="inbound",
            hostname=self.hostname,
            enable_SMTPUTF8=True,
            tls_context=self.tls_context,
            require_starttls=False,
            auth_exclude_mechanism=["LOGIN", "PLAIN"],
            ident="mtaserver",
        )

    async def start(self, host: str | None = None, port: int | None = None) -> tuple[str, int]:
        if host is None or port is None:
            assert self.cfg.listen is not None
            host, port = self.cfg.listen
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self._factory, host, port, reuse_address=True)
        sock = self._server.sockets[0].getsockname()
        log.info(kv(event="inbound_listening", host=sock[0], port=sock[1],
                    tls=self.tls_context is not None))  # fmt: skip
        return str(sock[0]), int(sock[1])

    def stop_accepting(self) -> None:
        """Close the listening socket; :meth:`stop` waits for it."""
        if self._server is not None:
            self._server.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
