"""Submission policy: who may send what, answered at the earliest command that can tell.

The aiosmtpd hooks here decide; :mod:`mtaserver.submission.protocol` keeps the session
honest. ``250`` after DATA is only sent once the pipeline returned a queue id, which it does
only after the spool's transaction committed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import json
import re
from collections.abc import Awaitable
from email.utils import getaddresses
from typing import Any, TypeVar

from aiosmtpd.smtp import AuthResult

from mtaserver.clock import Clock
from mtaserver.diskspace import declared_size
from mtaserver.log import get_logger, kv
from mtaserver.model import Submission
from mtaserver.prepare import Header, PrepareError, split_header
from mtaserver.ratelimit import RateLimiter
from mtaserver.smtpd.aiosmtpd_compat import ProtocolMembers
from mtaserver.submission.address import AddressError, parse_mailbox
from mtaserver.submission.futurerelease import HoldError, ehlo_keyword, parse_hold
from mtaserver.submission.ports import (
    AuthUser,
    BearerChecker,
    CredentialChecker,
    FailureThrottle,
    SmtpObserver,
    SpaceCheck,
    Submitter,
    Suppressions,
)
from mtaserver.submission.protocol import STORAGE_FULL, SubmissionSMTP, storage_reply
from mtaserver.submission.sasl import parse_oauthbearer, parse_xoauth2

log = get_logger("submission")
T = TypeVar("T")

_FROM_DOMAIN = re.compile(r"@([^\s<>,;:\"()\[\]\\]+)")
_LOGNAME = re.compile(r"^[A-Za-z0-9._@+\-]{1,128}$")
_BEARER_MECHANISMS = ("OAUTHBEARER", "XOAUTH2")
_TEMPFAIL = "454 4.7.0 Temporary authentication failure, try again later"
_INVALID = "535 5.7.8 Authentication credentials invalid"


class SubmissionHandler(ProtocolMembers):
    """The hooks aiosmtpd calls (``ProtocolMembers``: found once per class, not per session)."""

    def __init__(
        self,
        *,
        submitter: Submitter,
        authenticator: CredentialChecker,
        throttle: FailureThrottle,
        clock: Clock,
        max_recipients: int,
        max_header_size: int,
        user_rate: RateLimiter | None = None,
        suppressions: Suppressions | None = None,
        drop_suppressed: bool = False,
        observer: SmtpObserver | None = None,
        space: SpaceCheck | None = None,
        bearer: BearerChecker | None = None,
    ) -> None:
        self.observer = observer  # SubmissionSMTP reports new sessions to it
        self._space = space
        self._submitter = submitter
        self._auth = authenticator
        self._throttle = throttle
        self._clock = clock
        self._max_recipients = max_recipients
        self._max_header_size = max_header_size
        self._user_rate = user_rate
        self._suppressions = suppressions
        self._drop_suppressed = drop_suppressed
        self._bearer = bearer
        # OAuth mechanisms exist only with [oauth] issuers; their AUTH lines carry a token
        # (RFC 4954 allows 12288 octets; ours allow the configured token size, base64'd).
        self.excluded_mechanisms: tuple[str, ...] = () if bearer else _BEARER_MECHANISMS
        self.max_auth_line = (
            max(12288, 4 * (bearer.max_token_size + 1024) // 3 + 64) if bearer else 0
        )

    # -- EHLO ----------------------------------------------------------------------------
    async def handle_EHLO(
        self, server: SubmissionSMTP, session: Any, envelope: Any, hostname: str,
        responses: list[str],
    ) -> list[str]:  # fmt: skip
        session.host_name = hostname
        caps = [r[4:] for r in responses[1:] if r[4:] != "HELP"]
        max_hold = server.settings.max_future_release
        if max_hold > 0:
            caps.append(ehlo_keyword(max_hold, self._clock.now()))
        caps += ["PIPELINING", "ENHANCEDSTATUSCODES"]
        lines = [responses[0].replace("250 ", "250-", 1)]
        lines += [f"250-{c}" for c in caps[:-1]]
        lines.append(f"250 {caps[-1]}")
        return lines

    # -- MAIL / RCPT ---------------------------------------------------------------------
    async def handle_MAIL(
        self, server: SubmissionSMTP, session: Any, envelope: Any, address: str,
        mail_options: list[str],
    ) -> str:  # fmt: skip
        try:
            box = parse_mailbox(address)
        except AddressError as exc:
            if exc.routing:
                return f"553 5.7.1 Sender address form not accepted: {exc}"
            return f"501 5.1.7 Bad sender address syntax: {exc}"
        hold = None
        if server.hold_params:
            try:
                limit = server.settings.max_future_release
                hold = parse_hold(server.hold_params, max_interval=limit, now=self._clock.now())
            except HoldError as exc:
                return exc.reply
        if self._space is not None and self._space.low(declared_size(mail_options)):
            return STORAGE_FULL
        user = server.user
        if user is not None:
            if not user.owns(box.domain):
                log.info(kv(event="sender_rejected", user=user.name, client_ip=server.client_ip,
                            domain=box.domain))  # fmt: skip
                return f"553 5.7.1 Sender domain {box.domain} is not yours"
            if self._user_rate is not None and not self._user_rate.take(user.name):
                log.info(kv(event="rate_limited", user=user.name, client_ip=server.client_ip))
                return "451 4.7.1 Message rate limit exceeded, try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        envelope.hold = hold  # the RFC 4865 hold, turned into not_before at DATA
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(
        self, server: SubmissionSMTP, session: Any, envelope: Any, address: str,
        rcpt_options: list[str],
    ) -> str:  # fmt: skip
        if len(envelope.rcpt_tos) >= self._max_recipients:
            return "452 4.5.3 Too many recipients"
        try:
            box = parse_mailbox(address)
        except AddressError as exc:
            if exc.routing:
                return f"553 5.7.1 Recipient address form not accepted: {exc}"
            return f"501 5.1.3 Bad recipient address syntax: {exc}"
        if server.user is None and not server.trusted:
            log.info(kv(event="relay_denied", client_ip=server.client_ip, rcpt=str(box)))
            return "554 5.7.1 Relay access denied: authentication required"
        if self._suppressions is not None:
            sender_domain = envelope.mail_from.rpartition("@")[2].lower()
            try:
                hit = await self._suppressions.check(str(box), sender_domain)
            except Exception as exc:
                log.error(kv(event="suppression_check_failed", error=type(exc).__name__))
                return storage_reply(exc)
            if hit:
                reason = _reason(hit)
                if not self._drop_suppressed:
                    if self.observer is not None:
                        self.observer.recipient_refused(reason)
                    return f"550 5.7.1 Recipient address is suppressed ({reason})"
                # accept-and-drop: the client sees success; the recipient is stored as
                # suppressed with an event, and never delivered.
                dropped: dict[str, str] = getattr(envelope, "dropped", {})
                dropped[address] = reason
                envelope.dropped = dropped
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Recipient OK"

    # -- DATA ----------------------------------------------------------------------------
    async def handle_DATA(self, server: SubmissionSMTP, session: Any, envelope: Any) -> str:
        data: bytes = envelope.original_content
        user = server.user
        header: Header | None = None
        if user is not None:
            try:
                header = split_header(data, self._max_header_size)
            except PrepareError as exc:
                return exc.reply
            problem = self._check_from(header, user)
            if problem is not None:
                log.info(kv(event="from_rejected", user=user.name, client_ip=server.client_ip))
                return problem
        received_at = self._clock.now()
        hold = getattr(envelope, "hold", None)
        submission = Submission(
            sender=envelope.mail_from,
            recipients=tuple(envelope.rcpt_tos),
            data=data,
            client_ip=server.client_ip,
            helo=session.host_name or "",
            user=user.name if user is not None else None,
            tls_version=server.tls_version,
            listener=server.listener.name,
            received_at=received_at,
            dropped=tuple(getattr(envelope, "dropped", {}).items()),
            not_before=hold.release_at(received_at) if hold is not None else None,
        )
        try:
            queue_id = await self._submitter.submit(submission, header)
        except PrepareError as exc:
            return exc.reply
        except Exception as exc:  # the pipeline logged it with the queue id
            return storage_reply(exc)
        if submission.not_before is not None:
            log.info(kv(queue_id=queue_id, event="future_release",
                        release_at=round(submission.not_before, 3)))  # fmt: skip
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def _check_from(self, header: Header, user: AuthUser) -> str | None:
        """Sender binding on the header: exactly one From:, every address in it owned."""
        froms = header.values(b"from")
        if len(froms) != 1:
            return "550 5.6.0 Message must have exactly one From: header"
        value = froms[0].decode("utf-8", "replace")[:4096]
        try:
            parsed = [a for _, a in getaddresses([value]) if a]
        except Exception:  # RecursionError and friends on hostile input (PITFALLS)
            parsed = []
        domains = [d.lower().rstrip(".") for d in _FROM_DOMAIN.findall(value)]
        if not parsed or not domains or any("@" not in a for a in parsed):
            return "550 5.6.0 Malformed From: header"
        for domain in domains:
            if not user.owns(domain):
                return f"553 5.7.1 From: header domain {_printable(domain)} is not yours"
        return None

    # -- AUTH ----------------------------------------------------------------------------
    async def auth_PLAIN(self, server: SubmissionSMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            blob = await self._challenge(server, b"")
            if blob is None:
                return AuthResult(success=False, handled=True)
        else:
            blob = await self._decode(server, args[1].encode())
            if blob is None:
                return AuthResult(success=False, handled=True)
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await server.push("501 5.5.2 Cannot split PLAIN credentials")
            return AuthResult(success=False, handled=True)
        return await self._verify(server, parts[1], parts[2])

    async def auth_LOGIN(self, server: SubmissionSMTP, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await self._challenge(server, b"Username:")
        else:
            login = await self._decode(server, args[1].encode())
        if login is None:
            return AuthResult(success=False, handled=True)
        password = await self._challenge(server, b"Password:")
        if password is None:
            return AuthResult(success=False, handled=True)
        return await self._verify(server, login, password)

    async def _challenge(self, server: SubmissionSMTP, prompt: bytes) -> bytes | None:
        """Send a 334 challenge and read the answer; never logs what the client sent."""
        await server.push(b"334 " + base64.b64encode(prompt))
        line = await _read_line(server)
        if line is None:
            return None
        blob = line.strip()
        if blob == b"*":
            await server.push("501 5.7.0 Authentication aborted")
            return None
        return await self._decode(server, blob)

    async def _decode(self, server: SubmissionSMTP, blob: bytes) -> bytes | None:
        try:
            return base64.b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            await server.push("501 5.5.2 Cannot decode base64 response")
            return None

    async def _verify(self, server: SubmissionSMTP, login: bytes, password: bytes) -> AuthResult:
        ip = server.client_ip
        name = login.decode("utf-8", "replace").strip().lower()
        logname = name if _LOGNAME.match(name) else "<invalid>"
        if await _settle(self._throttle.locked(ip, name)):
            log.warning(kv(event="auth_locked", user=logname, client_ip=ip))
            await self._lockout(server)
            return AuthResult(success=False, handled=True)
        server.busy = True
        try:
            user = await self._auth.verify(login, password)
        finally:
            server.busy = False
        if user is not None:
            self._throttle.succeeded(user.name)
            server.user = user
            log.info(kv(event="auth_ok", user=user.name, client_ip=ip, tls=server.tls_version))
            return AuthResult(success=True, auth_data=user.name)
        delay = await _settle(self._throttle.failed(ip, name))
        log.warning(kv(event="auth_failed", user=logname, client_ip=ip))
        if self.observer is not None:
            self.observer.auth_failed(server.listener.name)
        if await _settle(self._throttle.locked(ip, name)):
            await self._lockout(server)
            return AuthResult(success=False, handled=True)
        if delay > 0:
            server.busy = True
            try:
                await self._clock.sleep(delay)
            finally:
                server.busy = False
        return AuthResult(
            success=False, handled=False, message="535 5.7.8 Authentication credentials invalid"
        )

    # -- AUTH with OAuth access tokens (RFC 7628 OAUTHBEARER, Google's XOAUTH2) ----------
    async def auth_OAUTHBEARER(self, server: SubmissionSMTP, args: list[str]) -> AuthResult:
        blob = await self._initial(server, args)
        if blob is None:
            return AuthResult(success=False, handled=True)
        parsed = parse_oauthbearer(blob)
        return await self._bearer_auth(server, "OAUTHBEARER", parsed)

    async def auth_XOAUTH2(self, server: SubmissionSMTP, args: list[str]) -> AuthResult:
        blob = await self._initial(server, args)
        if blob is None:
            return AuthResult(success=False, handled=True)
        parsed = parse_xoauth2(blob)
        return await self._bearer_auth(server, "XOAUTH2", parsed)

    async def _initial(self, server: SubmissionSMTP, args: list[str]) -> bytes | None:
        if len(args) == 1:
            return await self._challenge(server, b"")
        if args[1] == "=":  # RFC 4954: an empty initial response
            return b""
        return await self._decode(server, args[1].encode())

    async def _bearer_auth(
        self, server: SubmissionSMTP, mech: str, parsed: tuple[str, str | None] | None
    ) -> AuthResult:
        """Verify the token; on failure the RFC 7628 error exchange, then ``535 5.7.8``."""
        ip = server.client_ip
        bearer = self._bearer
        assert bearer is not None  # the mechanisms are excluded without one
        token, claimed = parsed if parsed is not None else ("", None)
        claimed_name = claimed.strip().lower() if claimed else None
        if claimed_name is not None and not _LOGNAME.match(claimed_name):
            claimed_name = None
        if await _settle(self._throttle.locked(ip, claimed_name)):
            log.warning(kv(event="auth_locked", mech=mech, user=claimed_name or "-",
                           client_ip=ip))  # fmt: skip
            await self._lockout(server)
            return AuthResult(success=False, handled=True)
        if parsed is None:
            status, reason, name, issuer = "invalid_request", "malformed SASL message", None, None
        else:
            server.busy = True
            try:
                verdict = await bearer.authenticate(token, claimed)
            finally:
                server.busy = False
            user = verdict.user
            if user is not None:
                self._throttle.succeeded(user.name)
                server.user = user
                log.info(kv(event="auth_ok", mech=mech, user=user.name, client_ip=ip,
                            issuer=verdict.issuer, tls=server.tls_version))  # fmt: skip
                return AuthResult(success=True, auth_data=user.name)
            if verdict.temporary:
                log.warning(kv(event="auth_tempfail", mech=mech, client_ip=ip,
                               reason=verdict.reason))  # fmt: skip
                await server.push(_TEMPFAIL)
                return AuthResult(success=False, handled=True)
            status, reason, issuer = verdict.status, verdict.reason, verdict.issuer
            name = verdict.name if verdict.name and _LOGNAME.match(verdict.name) else None
        delay = await _settle(self._throttle.failed(ip, name))
        log.warning(kv(event="auth_failed", mech=mech, user=name or "-", client_ip=ip,
                       issuer=issuer or "-", reason=reason))  # fmt: skip
        if self.observer is not None:
            self.observer.auth_failed(server.listener.name)
        if await _settle(self._throttle.locked(ip, name)):
            await self._lockout(server)
            return AuthResult(success=False, handled=True)
        error: dict[str, str] = {"status": status, "schemes": "bearer"}
        if bearer.discovery_url is not None:
            error["openid-configuration"] = bearer.discovery_url
        await server.push(b"334 " + base64.b64encode(json.dumps(error).encode()))
        answer = await _read_line(server)  # RFC 7628: the client's dummy %x01 (or empty)
        if delay > 0:
            server.busy = True
            try:
                await self._clock.sleep(delay)
            finally:
                server.busy = False
        if answer is None:
            return AuthResult(success=False, handled=True)
        if answer.strip() == b"*":
            return AuthResult(success=False, handled=False,
                              message="501 5.7.0 Authentication aborted")  # fmt: skip
        return AuthResult(success=False, handled=False, message=_INVALID)

    async def _lockout(self, server: SubmissionSMTP) -> None:
        await server.push("421 4.7.0 Too many authentication failures, closing connection")
        if server.transport is not None:
            server.transport.close()


async def _read_line(server: SubmissionSMTP) -> bytes | None:
    """One client line of an AUTH exchange, within the reader's limit; None if it was too
    long (answered ``500 5.5.6``, RFC 4954) or the connection closed."""
    reader = server.stream_reader
    try:
        return await reader.readuntil(b"\n")
    except asyncio.IncompleteReadError:
        return None
    except asyncio.LimitOverrunError as exc:
        await reader.read(exc.consumed)
        while True:  # drop the rest of the line, in buffer-sized pieces
            try:
                await reader.readuntil(b"\n")
                break
            except asyncio.LimitOverrunError as more:
                await reader.read(more.consumed)
            except asyncio.IncompleteReadError:
                return None
        await server.push("500 5.5.6 Authentication exchange line is too long")
        return None


async def _settle(value: T | Awaitable[T]) -> T:
    """A throttle's answer, awaited when it comes from the owner process."""
    if inspect.isawaitable(value):
        return await value
    return value


def _reason(hit: object) -> str:
    reason = getattr(hit, "reason", None)
    text = str(reason if reason is not None else hit)
    return _printable(text)[:100] or "suppressed"


def _printable(text: str) -> str:
    return "".join(c for c in text if 0x20 <= ord(c) < 0x7F)
