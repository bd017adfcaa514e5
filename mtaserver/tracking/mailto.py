"""Unsubscribes that arrive by mail, at ``[tracking] unsubscribe_mailto``.

The List-Unsubscribe header offers ``<mailto:{address}?subject=unsubscribe-{token}>`` next
to the one-click URL (RFC 2369; clients and providers without RFC 8058 use it). The
inbound listener accepts RCPT for that address and hands the message here. The token is
taken from the Subject (``Re:`` and other prefixes do not matter), else from the start of
the body, for clients that move the subject there; it is verified exactly like the one in
the HTTPS link, and the recipient is unsubscribed through the same :class:`Recorder` path
as a one-click POST: suppression for the sender's domain, then an ``unsubscribe`` event
(with ``via = "mail"``).

Anyone holding the token can unsubscribe its recipient, over HTTPS or by mail alike: the
token, not the From address (trivially forged), is the proof.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import re
from dataclasses import dataclass

from mtaserver.log import get_logger, kv
from mtaserver.tracking.recorder import Recorder
from mtaserver.tracking.tokens import UNSUBSCRIBE, TokenCodec, TokenError

log = get_logger("tracking")

_TOKEN = re.compile(r"unsubscribe-([A-Za-z0-9_-]{20,1024})")
_HEAD_LIMIT = 64 * 1024  # headers beyond this are not read
_BODY_LIMIT = 8 * 1024  # the token is looked for this far into the body


@dataclass(frozen=True, slots=True)
class MailResult:
    """What one message to the unsubscribe address did; ``reply`` is the SMTP answer."""

    outcome: str  # "unsubscribed" | "no-token" | "bad-token" | "unknown-recipient"
    reply: str


def find_token(raw: bytes) -> str | None:
    """The ``unsubscribe-{token}`` token from the Subject, else the start of the body."""
    head, sep, body = raw[:_HEAD_LIMIT].partition(b"\r\n\r\n")
    if not sep:
        head, sep, body = raw[:_HEAD_LIMIT].partition(b"\n\n")
    headers = email.parser.BytesHeaderParser(policy=email.policy.default).parsebytes(
        head + b"\r\n\r\n"
    )
    try:
        subject = str(headers.get("subject") or "")
    except (ValueError, IndexError):  # a malformed encoded word
        subject = ""
    m = _TOKEN.search(subject)
    if m is None:
        m = _TOKEN.search(body[:_BODY_LIMIT].decode("ascii", "replace"))
    return m.group(1) if m else None


class MailUnsubscribe:
    """Handles mail sent to the ``mailto:`` List-Unsubscribe address."""

    def __init__(self, address: str, codec: TokenCodec, recorder: Recorder) -> None:
        self.address = address.lower()
        self.codec = codec
        self.recorder = recorder

    def accepts(self, rcpt: str) -> bool:
        return rcpt.strip().lower() == self.address

    async def process(self, raw: bytes, client_ip: str) -> MailResult:
        """Unsubscribe the token's recipient; the reply says why when nothing was done.

        Raises StorageError when storing failed (the listener answers 451, the sender
        retries).
        """
        # Header parsing is bounded (64 KiB) but arbitrary input: off the loop, like bounces.
        token = await asyncio.to_thread(find_token, raw)
        if token is None:
            log.info(kv(event="mail_unsubscribe_refused", reason="no-token", client_ip=client_ip))
            return MailResult(
                "no-token", "550 5.7.1 No unsubscribe-<token> in the Subject: nothing was done"
            )
        try:
            data = self.codec.verify(token)
        except TokenError:
            data = None
        if data is None or data.kind != UNSUBSCRIBE:
            log.info(kv(event="mail_unsubscribe_refused", reason="bad-token", client_ip=client_ip,
                        token=token[:6]))  # fmt: skip
            return MailResult("bad-token", "550 5.7.1 Unsubscribe token not valid here")
        done = await self.recorder.unsubscribe(
            data.queue_id, data.idx, "", client_ip, via="mail",
            address=data.address, sender_domain=data.sender_domain,
        )  # fmt: skip
        if not done:
            log.info(kv(event="mail_unsubscribe_refused", reason="unknown-recipient",
                        queue_id=data.queue_id, idx=data.idx))  # fmt: skip
            return MailResult(
                "unknown-recipient",
                "550 5.7.1 The message this token belongs to is no longer kept here",
            )
        return MailResult("unsubscribed", "250 2.0.0 Unsubscribed")
