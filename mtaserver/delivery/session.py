"""One SMTP client connection to one MX address: open (greeting, EHLO, STARTTLS per
policy) and mail transactions that return per-recipient replies.

Nothing here raises for SMTP or network trouble: ``open_session`` returns a ``Session`` or
the ``SmtpReply`` explaining why not, and ``Session.transact`` returns replies. Every await
carries a timeout from the ``RoutePolicy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

import aiosmtplib

from mtaserver.delivery.replies import from_exception, local, parse_reply, unexpected
from mtaserver.delivery.tls import TlsContexts
from mtaserver.model import RoutePolicy, SmtpReply


@dataclass(frozen=True, slots=True)
class TxOutcome:
    """What one MAIL transaction produced.

    ``replies`` maps each recipient's position in the transaction to its final reply (the
    RCPT refusal, or the DATA reply for accepted ones). ``elsewhere`` is set when the
    session failed before the server said anything about any recipient, so the same
    transaction may be tried on the next MX host. ``usable`` tells whether the connection
    may carry another transaction.
    """

    replies: tuple[SmtpReply, ...]
    usable: bool
    elsewhere: bool = False


class Session:
    """An open, greeted, EHLO'd (and maybe TLS) connection."""

    def __init__(
        self,
        smtp: aiosmtplib.SMTP,
        mx: str,
        ip: str,
        port: int,
        tls_mode: str,
        tls_version: str | None,
        cipher: str | None,
    ) -> None:
        self.smtp = smtp
        self.mx = mx
        self.ip = ip
        self.port = port
        self.tls_mode = tls_mode
        self.tls_version = tls_version
        self.cipher = cipher
        self.transactions = 0  # MAIL transactions started on this connection
        # The current transaction's RCPT refusals so far (None: no final answer yet), for
        # the caller that abandons the transaction half-way (its deadline).
        self.answers: list[SmtpReply | None] = []
        self.idle_deadline = 0.0  # monotonic time after which an idle session is dropped
        self.dest = ""  # the destination whose connection slot it holds (in a cluster)

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.mx, self.ip, self.port, self.tls_mode)

    @property
    def what(self) -> str:
        return f"{self.mx} [{self.ip}]:{self.port}"

    @property
    def connected(self) -> bool:
        return self.smtp.is_connected

    async def reset(self, timeout: float) -> bool:
        """RSET before reusing the connection; False when it is no longer usable."""
        try:
            await self.smtp.rset(timeout=timeout)
        except asyncio.CancelledError:
            self.abort()
            raise
        except Exception:
            self.abort()
            return False
        return True

    async def close(self, timeout: float = 5.0) -> None:
        """QUIT politely (bounded), then drop the socket whatever happens (cancelled too)."""
        try:
            if self.smtp.is_connected:
                with contextlib.suppress(Exception):
                    await self.smtp.quit(timeout=timeout)
        finally:
            self.abort()

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.smtp.close()

    async def transact(
        self,
        sender: str,
        recipients: Sequence[str],
        data: bytes,
        policy: RoutePolicy,
    ) -> TxOutcome:
        """MAIL, RCPT each, DATA with the stored bytes (aiosmtplib dot-stuffs them)."""
        smtp = self.smtp
        n = len(recipients)
        self.transactions += 1
        self.answers = []
        options: list[str] = []
        if smtp.supports_extension("size"):
            options.append(f"SIZE={len(data)}")
        if smtp.supports_extension("8bitmime") and not data.isascii():
            options.append("BODY=8BITMIME")
        needs_utf8 = not sender.isascii() or any(not r.isascii() for r in recipients)
        encoding = "ascii"
        if needs_utf8:
            if not smtp.supports_extension("smtputf8"):
                reply = SmtpReply(
                    550, f"{self.mx} does not support SMTPUTF8 (internationalized address)", "5.6.7"
                )
                return TxOutcome((reply,) * n, usable=True)
            options.append("SMTPUTF8")
            encoding = "utf-8"

        # MAIL FROM
        try:
            await smtp.mail(
                sender, options=options, encoding=encoding, timeout=policy.command_timeout
            )
        except aiosmtplib.SMTPSenderRefused as exc:
            odd = unexpected(self.what, "MAIL", exc.code, exc.message)
            if odd is not None:
                self.abort()
                return TxOutcome((odd,) * n, usable=False)
            reply = parse_reply(exc.code, exc.message)
            if reply.code == 421 or not smtp.is_connected:
                return TxOutcome((reply,) * n, usable=False, elsewhere=True)
            return TxOutcome((reply,) * n, usable=True)
        except ValueError:
            reply = SmtpReply(550, "invalid sender address", "5.1.7")
            return TxOutcome((reply,) * n, usable=self.connected)
        except Exception as exc:
            reply = from_exception(exc, self.what)
            self.abort()
            return TxOutcome((reply,) * n, usable=False, elsewhere=True)

        # RCPT TO each
        replies: list[SmtpReply | None] = [None] * n
        self.answers = replies
        accepted: list[int] = []
        for i, rcpt in enumerate(recipients):
            try:
                await smtp.rcpt(rcpt, encoding=encoding, timeout=policy.command_timeout)
            except aiosmtplib.SMTPRecipientRefused as exc:
                odd = unexpected(self.what, "RCPT", exc.code, exc.message)
                if odd is not None:
                    return self._broken(replies, odd)
                reply = parse_reply(exc.code, exc.message)
                if exc.code == 421 or not smtp.is_connected:
                    return self._broken(replies, reply)
                replies[i] = reply
                continue
            except ValueError:
                replies[i] = SmtpReply(550, "invalid recipient address", "5.1.3")
                continue
            except Exception as exc:
                return self._broken(replies, from_exception(exc, self.what))
            accepted.append(i)

        if not accepted:
            ok = await self.reset(policy.command_timeout)
            return TxOutcome(tuple(r or local("4.3.0", "no reply") for r in replies), ok)

        # DATA
        try:
            resp = await smtp.data(data, timeout=policy.data_timeout)
            data_reply = parse_reply(resp.code, resp.message)
            usable = True
        except aiosmtplib.SMTPDataError as exc:
            odd = unexpected(self.what, "DATA", exc.code, exc.message)
            data_reply = odd or parse_reply(exc.code, exc.message)
            usable = odd is None and smtp.is_connected and exc.code != 421
            if usable:
                usable = await self.reset(policy.command_timeout)
        except Exception as exc:
            data_reply = from_exception(exc, self.what)
            self.abort()
            usable = False
        for i in accepted:
            replies[i] = data_reply
        return TxOutcome(tuple(r or data_reply for r in replies), usable)

    def _broken(self, replies: list[SmtpReply | None], reply: SmtpReply) -> TxOutcome:
        """The connection failed before DATA: every recipient without a refusal gets
        ``reply``; nothing was delivered, so with no refusal yet the whole transaction
        may go to the next host."""
        self.abort()
        answered = any(r is not None for r in replies)
        out = tuple(r if r is not None else reply for r in replies)
        return TxOutcome(out, usable=False, elsewhere=not answered)


async def open_session(
    mx: str,
    ip: str,
    port: int,
    policy: RoutePolicy,
    *,
    hostname: str,
    contexts: TlsContexts,
) -> Session | SmtpReply:
    """Connect, read the greeting, EHLO, and STARTTLS as the policy says."""
    mode = policy.tls
    session_or_reply = await _open(mx, ip, port, policy, hostname, contexts, mode)
    if (
        mode == "opportunistic"
        and isinstance(session_or_reply, SmtpReply)
        and session_or_reply.enhanced == "4.7.5"
    ):
        # RFC 7435: a failed opportunistic handshake falls back to a plaintext session.
        session_or_reply = await _open(mx, ip, port, policy, hostname, contexts, "none")
        if isinstance(session_or_reply, Session):
            session_or_reply.tls_mode = "opportunistic"
    return session_or_reply


async def _open(
    mx: str,
    ip: str,
    port: int,
    policy: RoutePolicy,
    hostname: str,
    contexts: TlsContexts,
    mode: str,
) -> Session | SmtpReply:
    what = f"{mx} [{ip}]:{port}"
    smtp = aiosmtplib.SMTP(
        hostname=ip,
        port=port,
        local_hostname=hostname,
        timeout=policy.command_timeout,
        start_tls=False,  # never aiosmtplib's silent opportunistic default; we decide below
        use_tls=False,
        validate_certs=False,
    )
    try:
        await smtp.connect(timeout=policy.connect_timeout)
        await _hello(smtp, policy)
        tls_version: str | None = None
        cipher: str | None = None
        if mode != "none":
            if not smtp.supports_extension("starttls"):
                if mode == "required":
                    smtp.close()
                    return local("4.7.4", f"TLS is required, but {what} does not offer STARTTLS")
            else:
                ctx = contexts.verified if mode == "required" else contexts.opportunistic
                try:
                    await smtp.starttls(
                        server_hostname=mx, tls_context=ctx, timeout=policy.command_timeout
                    )
                except aiosmtplib.SMTPResponseException as exc:
                    smtp.close()
                    reply = parse_reply(exc.code, exc.message)
                    if mode == "required":
                        return local("4.7.4", f"TLS is required, but {what} refused STARTTLS")
                    return SmtpReply(reply.code, reply.text, "4.7.5")
                except Exception as exc:
                    # A failed handshake surfaces as an SSL error or as a reset connection;
                    # either way it is a TLS failure (opportunistic mode retries in plaintext).
                    smtp.close()
                    reply = from_exception(exc, what)
                    if reply.enhanced != "4.7.5":
                        reply = local("4.7.5", f"TLS handshake with {what} failed")
                    return reply
                await _hello(smtp, policy)
                ssl_obj = smtp.get_transport_info("ssl_object")
                if isinstance(ssl_obj, ssl.SSLObject | ssl.SSLSocket):
                    tls_version = ssl_obj.version()
                    info = ssl_obj.cipher()
                    cipher = info[0] if info else None
                if mode == "required" and tls_version is None:  # defensive: never plaintext
                    smtp.close()
                    return local("4.7.4", f"TLS is required, but no TLS session with {what}")
        return Session(smtp, mx, ip, port, mode, tls_version, cipher)
    except Exception as exc:
        with contextlib.suppress(Exception):
            smtp.close()
        return from_exception(exc, what)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            smtp.close()
        raise


async def _hello(smtp: aiosmtplib.SMTP, policy: RoutePolicy) -> None:
    """EHLO, falling back to HELO for servers that do not speak ESMTP."""
    try:
        await smtp.ehlo(timeout=policy.command_timeout)
    except aiosmtplib.SMTPHeloError:
        if not smtp.is_connected:
            raise
        await smtp.helo(timeout=policy.command_timeout)
