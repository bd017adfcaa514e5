"""The submission session: the shared hardened session (``mtaserver.smtpd``) plus AUTH state.

Everything aiosmtpd lacks — per-IP connection cap, idle and session timeouts answered with
``421 4.4.2``, DATA read and cleaned by us, command-argument hygiene, no exception text on
the wire, enhanced status codes — comes from :class:`mtaserver.smtpd.GuardedSMTP`, which
the inbound listener shares. What is particular to submission is here: the listener's TLS
posture (:class:`ListenerSpec`), trusted networks, the authenticated user, the answers
to VRFY and EXPN, and taking RFC 4865 hold parameters out of MAIL before aiosmtpd refuses
them as unknown (the handler judges them).
"""

from __future__ import annotations

import asyncio
import collections
import ipaddress
import logging
import re
import ssl
from dataclasses import dataclass
from typing import Any

from aiosmtpd.smtp import SMTP

from mtaserver.log import get_logger
from mtaserver.smtpd import Admission, Guard, GuardedSMTP, SessionRegistry
from mtaserver.smtpd.hygiene import clean_data
from mtaserver.smtpd.replies import INTERNAL_ERROR, STORAGE_ERROR, STORAGE_FULL, storage_reply
from mtaserver.submission.futurerelease import split_hold_params

__all__ = [
    "INTERNAL_ERROR",
    "STORAGE_ERROR",
    "STORAGE_FULL",
    "ListenerSpec",
    "SessionSettings",
    "SubmissionSMTP",
    "clean_data",
    "install_log_redaction",
    "is_trusted",
    "storage_reply",
]

log = get_logger("submission")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    """One listening socket's security posture."""

    name: str  # "submission", "submissions", "plain"
    implicit_tls: bool = False  # TLS from the first byte (465)
    starttls: bool = True  # offer STARTTLS (needs a certificate)
    require_tls: bool = True  # refuse MAIL/AUTH before STARTTLS


@dataclass(frozen=True, slots=True)
class SessionSettings:
    hostname: str
    max_message_size: int
    idle_timeout: float
    max_session_time: float
    bare_newline: str  # "normalize" | "reject"
    trusted_networks: tuple[Network, ...] = ()
    max_future_release: float = 0.0  # RFC 4865 FUTURERELEASE when > 0 (seconds)

    @property
    def guard(self) -> Guard:
        """The limits every session of this listener runs under."""
        return Guard(
            max_message_size=self.max_message_size,
            idle_timeout=self.idle_timeout,
            max_session_time=self.max_session_time,
            bare_newline=self.bare_newline,
        )


def is_trusted(ip: str, networks: tuple[Network, ...]) -> bool:
    if not networks:
        return False
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


class SubmissionSMTP(GuardedSMTP):
    """One client session. Per-session policy state lives here; the handler reads it."""

    log = log

    def __init__(
        self,
        handler: Any,
        *,
        listener: ListenerSpec,
        settings: SessionSettings,
        connections: Admission,
        tls_context: ssl.SSLContext | None,
        sessions: SessionRegistry[SubmissionSMTP] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        starttls_ctx = tls_context if (listener.starttls and not listener.implicit_tls) else None
        # OAuth AUTH lines carry a JWT (kilobytes): the reader and the AUTH command limit
        # grow to what the handler allows; other commands keep aiosmtpd's limits.
        auth_line: int = getattr(handler, "max_auth_line", 0)
        if auth_line > self.line_length_limit:
            self.line_length_limit = auth_line
        super().__init__(
            handler,
            guard=settings.guard,
            connections=connections,
            listener_name=listener.name,
            sessions=sessions,
            loop=loop,
            enable_SMTPUTF8=True,
            hostname=settings.hostname,
            ident="ESMTP",
            tls_context=starttls_ctx,
            require_starttls=bool(starttls_ctx) and listener.require_tls,
            auth_required=False,
            # With implicit TLS the transport is already encrypted; aiosmtpd only knows
            # about STARTTLS, so it must not insist on it.
            auth_require_tls=not listener.implicit_tls,
            auth_exclude_mechanism=getattr(handler, "excluded_mechanisms", ()),
        )
        if auth_line:
            limits = collections.defaultdict(lambda: SMTP.command_size_limit, AUTH=auth_line)
            self.command_size_limits = limits  # per session, not aiosmtpd's shared class dict
        self.listener = listener
        self.settings = settings
        self.trusted = False
        self.user: Any = None  # auth.User once authenticated
        # HOLDFOR/HOLDUNTIL of the MAIL command being handled: (NAME, value or None)
        self.hold_params: tuple[tuple[str, str | None], ...] = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.trusted = is_trusted(self.client_ip, self.settings.trusted_networks)

    @property
    def tls_version(self) -> str | None:
        if self.transport is None:
            return None
        obj = self.transport.get_extra_info("ssl_object")
        return str(obj.version()) if obj is not None else None

    @property
    def encrypted(self) -> bool:
        return self.listener.implicit_tls or self.tls_active

    async def smtp_MAIL(self, arg: str | None) -> None:
        self.hold_params = ()
        session = self.session
        extended = session is not None and session.extended_smtp
        if arg and extended and self.settings.max_future_release > 0:
            arg, self.hold_params = split_hold_params(arg)
        await super().smtp_MAIL(arg)

    async def smtp_VRFY(self, arg: str) -> None:
        await self.push("252 2.5.0 Cannot VRFY user, but will accept message")

    async def smtp_EXPN(self, arg: str) -> None:
        await self.push("502 5.5.1 EXPN not implemented")


def install_log_redaction() -> None:
    """Redact AUTH arguments in aiosmtpd's per-command log lines (defence in depth: it masks
    them itself) and drop its per-AUTH deprecation warning."""
    logger = logging.getLogger("mail.log")
    if not any(isinstance(f, _AuthRedactor) for f in logger.filters):
        logger.addFilter(_AuthRedactor())


class _AuthRedactor(logging.Filter):
    _AUTH = re.compile(rb"^\s*AUTH\s+(\S+)\s+\S+", re.I)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("Session.login_data is"):
            return False  # aiosmtpd's own deprecation notice, once per successful AUTH
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(self._redact(a) for a in record.args)
        return True

    def _redact(self, value: object) -> object:
        if isinstance(value, bytes | bytearray):
            m = self._AUTH.match(value)
            if m:
                return b"AUTH " + m.group(1) + b" <redacted>"
        elif isinstance(value, str):
            m = self._AUTH.match(value.encode("utf-8", "replace"))
            if m:
                return "AUTH " + m.group(1).decode("ascii", "replace") + " <redacted>"
        return value
