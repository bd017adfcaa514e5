"""The inbound listener (port 25 for the bounce domain only) and what a bounce does.

Accepts RCPT only for a VERP return path with a valid signature, the configured
complaints address, or the tracking ``unsubscribe_mailto`` address (handed to a
:class:`Unsubscribes` sink, ``mtaserver.tracking.mailto``); everything else is
``550 5.7.1`` — this listener is never a relay and offers no AUTH. ``MAIL FROM:<>`` is
welcome (that is what bounces use). The session is the hardened one submission uses too
(:class:`mtaserver.smtpd.GuardedSMTP`): connection caps and rates per IP, idle and session
deadlines answered with 421, DATA read with its size enforced and bare CR/LF, NUL and
over-long lines refused or normalized, control characters in commands refused; any
handler failure answers ``451 4.3.0`` and never the exception text.

A message that arrives is parsed off the event loop (:func:`mtaserver.dsn.parse_bounce_async`)
and each failed recipient it reports is tied to ``(queue_id, idx)`` — by the VERP token it
was sent to, else by a VERP address or the Message-ID found in the returned message — then
marked bounced through the spool with a ``bounced`` event (source ``async``), and the
suppression policy (:func:`mtaserver.suppression.decide`) applied to its reason: a dead
address is suppressed for every sender, anything else only counted. Complaints (ARF)
record a ``complaint`` event and suppress for the sending domain of the message
complained about. Reports that cannot be tied to a message we sent change nothing (backscatter and
forgeries must not poison the suppression list).
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aiosmtpd.smtp import SMTP, Envelope, Session

from mtaserver.clock import Clock
from mtaserver.config.inbound import InboundConfig
from mtaserver.diskspace import declared_size
from mtaserver.dsn import ParseTimeout, parse_bounce_async, reason_kind_of, reason_of
from mtaserver.errors import StorageError
from mtaserver.log import get_logger, kv
from mtaserver.model import (
    BouncedRecipient,
    BounceKind,
    BounceReport,
    Event,
    RecipientState,
    RecipientUpdate,
)
from mtaserver.ratelimit import ConnectionLimiter, RateLimiter, Refusal
from mtaserver.smtpd import Guard, GuardedSMTP
from mtaserver.suppression import Suppression
from mtaserver.verp import Verp

log = get_logger("inbound")

_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
CONNECTION_BURST = 10.0  # new connections an address may open at once, then the rate


class MessageView(Protocol):
    sender: str

    @property
    def recipients(self) -> Sequence[Any]: ...


class Queue(Protocol):
    """What inbound needs from the spool."""

    async def show(self, queue_id: str) -> Any: ...

    async def find_by_message_id(self, message_id: str) -> Sequence[tuple[str, int]]: ...

    async def record(
        self, updates: Sequence[RecipientUpdate], events: Sequence[Event] = ()
    ) -> Sequence[int]: ...


class Suppressor(Protocol):
    async def apply(
        self,
        address: str,
        reason: str,
        *,
        sender_domain: str | None,
        source: str,
        kind: str | None = None,
        reply: str | None = None,
        queue_id: str | None = None,
        event_id: int | None = None,
    ) -> Suppression | None: ...


class UnsubscribeReply(Protocol):
    @property
    def outcome(self) -> str: ...

    @property
    def reply(self) -> str: ...


class SpaceCheck(Protocol):
    """Free space where the queue lives (``mtaserver.diskspace.FreeSpace``)."""

    def low(self, need: int = 0) -> bool: ...


class Unsubscribes(Protocol):
    """Mail to the ``mailto:`` List-Unsubscribe address (``tracking.mailto.MailUnsubscribe``)."""

    def accepts(self, rcpt: str) -> bool: ...

    async def process(self, raw: bytes, client_ip: str) -> UnsubscribeReply: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What processing one inbound message did (for logs and tests)."""

    kind: str  # "bounce" | "complaint" | "not-a-bounce" | "unparsed"
    bounced: tuple[tuple[str, int], ...] = ()
    complaints: tuple[tuple[str, int], ...] = ()
    suppressed: tuple[str, ...] = ()
    unattributed: tuple[str, ...] = ()


def _domain(address: str) -> str | None:
    _, at, dom = address.rpartition("@")
    return dom.lower().rstrip(".") if at and dom else None


class BounceProcessor:
    """Turns one inbound message into spool updates, events and suppressions."""

    def __init__(
        self,
        queue: Queue,
        suppressions: Suppressor,
        verp: Verp,
        bounce_domain: str,
        clock: Clock,
        parse_timeout: float = 10.0,
    ) -> None:
        self.queue = queue
        self.suppressions = suppressions
        self.verp = verp
        self.clock = clock
        self.parse_timeout = parse_timeout
        pattern = rf"[A-Za-z0-9._+=-]{{1,200}}@{re.escape(bounce_domain)}"
        self._verp_re = re.compile(pattern.encode(), re.IGNORECASE)

    async def process(self, raw: bytes, rcpts: Sequence[str]) -> Outcome:
        try:
            report = await parse_bounce_async(raw, self.parse_timeout)
        except ParseTimeout:
            log.warning(kv(event="bounce_parse_timeout", size=len(raw)))
            return Outcome("unparsed")
        ids = [p for p in (self.verp.parse(r) for r in rcpts) if p is not None]
        if report is None:
            log.info(kv(event="inbound_not_a_bounce", size=len(raw), verp=len(ids)))
            return Outcome("not-a-bounce")
        if not ids:
            ids = self._verp_in_body(raw)
        if not ids and report.original_message_id:
            ids = list(await self.queue.find_by_message_id(report.original_message_id))
        if report.is_complaint:
            return await self._complaint(report, ids)
        return await self._bounce(report, ids)

    def _verp_in_body(self, raw: bytes) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for m in self._verp_re.finditer(raw[: 2 * 1024 * 1024]):
            got = self.verp.parse(m.group(0).decode("ascii", "replace"))
            if got is not None and got not in out:
                out.append(got)
            if len(out) >= 50:
                break
        return out

    async def _targets(
        self, ids: Sequence[tuple[str, int]]
    ) -> tuple[dict[tuple[str, int], str], dict[str, str | None]]:
        """Address of each (queue_id, idx) we know, and each message's sender domain."""
        addresses: dict[tuple[str, int], str] = {}
        senders: dict[str, str | None] = {}
        for qid in dict.fromkeys(q for q, _ in ids):
            info = await self.queue.show(qid)
            if info is None:
                continue
            senders[qid] = _domain(info.sender)
            by_idx = {r.idx: r.address for r in info.recipients}
            for q, idx in ids:
                if q == qid and idx in by_idx:
                    addresses[(q, idx)] = by_idx[idx]
        return addresses, senders

    @staticmethod
    def _match(
        reported: Sequence[BouncedRecipient], addresses: dict[tuple[str, int], str]
    ) -> list[tuple[tuple[str, int], BouncedRecipient]]:
        """Pair reported recipients with the recipients we sent to."""
        pairs: list[tuple[tuple[str, int], BouncedRecipient]] = []
        by_addr: dict[str, list[tuple[str, int]]] = {}
        for key, addr in addresses.items():
            by_addr.setdefault(addr.lower(), []).append(key)
        used: set[tuple[str, int]] = set()
        for r in reported:
            for key in by_addr.get(r.recipient.lower(), []):
                if key not in used:
                    pairs.append((key, r))
                    used.add(key)
                    break
        if len(addresses) == 1 and not pairs and reported:
            # One VERP-identified recipient: the notice is about it even when forwarding
            # rewrote the address the remote side reports.
            (key,) = addresses
            pairs.append((key, reported[0]))
        return pairs

    async def _bounce(self, report: BounceReport, ids: list[tuple[str, int]]) -> Outcome:
        failed = [r for r in report.recipients if r.action == "failed"]
        addresses, senders = await self._targets(ids)
        if not failed and not report.recipients and len(addresses) == 1:
            # A failure notice that names nobody, sent to one recipient's VERP address.
            ((_, addr),) = addresses.items()
            failed = [
                BouncedRecipient(addr, "failed", "5.0.0", None, "", None, "other", BounceKind.HARD)
            ]
        pairs = self._match(failed, addresses)
        matched = {id(r) for _, r in pairs}
        unattributed = tuple(r.recipient for r in failed if id(r) not in matched)
        now = self.clock.now()
        bounced: list[tuple[str, int]] = []
        suppressed: list[str] = []
        for (qid, idx), r in pairs:
            addr = addresses[(qid, idx)]
            event = Event(
                "bounced",
                now,
                qid,
                addr,
                (
                    ("source", "async"),
                    ("idx", idx),
                    ("kind", r.kind.value),
                    ("category", r.category),
                    ("reason", reason_of(r)),
                    ("status", r.status),
                    ("reply_code", r.reply_code),
                    ("diagnostic", r.diagnostic[:500]),
                    ("remote_mta", r.remote_mta),
                    ("reporting_mta", report.reporting_mta),
                ),
            )
            reply = f"{r.status or ''} {r.diagnostic}".strip()[:500] or "async bounce"
            update = RecipientUpdate(qid, idx, RecipientState.BOUNCED, reply, attempted=False)
            s = await self._record(qid, addr, update, event, r, reply, "async",
                                   senders.get(qid))  # fmt: skip
            bounced.append((qid, idx))
            if s:
                suppressed.append(addr)
            log.info(kv(event="async_bounce", queue_id=qid, idx=idx, rcpt=f"<{addr}>",
                        status=r.status, kind=r.kind.value, category=r.category,
                        reason=reason_of(r), suppressed=s))  # fmt: skip
        for addr in unattributed:
            log.info(kv(event="bounce_unattributed", rcpt=f"<{addr}>"))
        return Outcome("bounce", tuple(bounced), (), tuple(suppressed), unattributed)

    async def _complaint(self, report: BounceReport, ids: list[tuple[str, int]]) -> Outcome:
        addresses, senders = await self._targets(ids)
        if report.recipients:
            pairs = self._match(report.recipients, addresses)
        else:
            # Most feedback loops redact the recipient; the VERP token or Message-ID of the
            # returned message still says whom we sent it to.
            pairs = [
                (
                    key,
                    BouncedRecipient(
                        a, "complaint", None, None, "", None, "complaint", BounceKind.HARD
                    ),
                )
                for key, a in list(addresses.items())[:1]
            ]
        now = self.clock.now()
        done: list[tuple[str, int]] = []
        suppressed: list[str] = []
        for (qid, idx), r in pairs:
            addr = addresses[(qid, idx)]
            event = Event(
                "complaint", now, qid, addr, (("idx", idx), ("feedback", r.diagnostic[:200]))
            )
            reply = r.diagnostic[:500] or "complaint"
            s = await self._record(qid, addr, None, event, r, reply, "complaint",
                                   senders.get(qid))  # fmt: skip
            done.append((qid, idx))
            if s:
                suppressed.append(addr)
            log.info(kv(event="complaint", queue_id=qid, idx=idx, rcpt=f"<{addr}>",
                        suppressed=s))  # fmt: skip
        return Outcome("complaint", (), tuple(done), tuple(suppressed))

    async def _record(
        self,
        qid: str,
        addr: str,
        update: RecipientUpdate | None,
        event: Event,
        reported: BouncedRecipient,
        reply: str,
        source: str,
        sender_domain: str | None,
    ) -> bool:
        """Store the update and event, then apply the suppression policy to the recipient's
        reason (the entry linked to the event). True when the address was suppressed."""
        (event_id,) = await self.queue.record([update] if update else [], [event])
        s = await self.suppressions.apply(
            addr, reason_of(reported), sender_domain=sender_domain, source=source,
            kind=reason_kind_of(reported), reply=reply, queue_id=qid, event_id=event_id,
        )  # fmt: skip
        return s is not None


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

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
