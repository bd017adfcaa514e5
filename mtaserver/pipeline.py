"""From an accepted submission to a queued message: the one path every message takes.

Submission → :func:`prepare.cleanup` → ``Tracker.personalize`` → ``DkimSigner.sign`` (each
copy; signing is last, once every byte is final) → ``Spool.enqueue``. The queue id is made
here, before cleanup, because ``Received:``, the Message-ID and tracking tokens carry it.
The stages are Protocols; ``app`` wires the concrete objects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from mtaserver.log import get_logger, kv
from mtaserver.model import PreparedMessage, PreparedRecipient, Submission
from mtaserver.prepare import Header, PrepareError, cleanup

log = get_logger("pipeline")


class Tracker(Protocol):
    async def personalize(
        self, queue_id: str, data: bytes, recipients: tuple[str, ...], opens: bool,
        clicks: bool, unsubscribe: bool, *, sender: str = "",
    ) -> tuple[PreparedRecipient, ...]: ...  # fmt: skip


class DkimSigner(Protocol):
    async def sign(
        self, data: bytes, fields: tuple[bytes, ...] | None = None, body: bytes | None = None
    ) -> bytes: ...


class Spool(Protocol):
    async def enqueue(self, msg: PreparedMessage) -> None: ...


@dataclass(frozen=True, slots=True)
class TrackingOptions:
    opens: bool = False
    clicks: bool = False
    unsubscribe: bool = False

    @property
    def any(self) -> bool:
        return self.opens or self.clicks or self.unsubscribe


def tracking_options(header: str | None, default: TrackingOptions) -> TrackingOptions:
    """``X-Mtaserver-Track: opens, clicks`` (also ``all``, ``none``, ``unsubscribe``).

    Absent → the configured default (per user); unknown words are ignored, so a typo
    leaves a feature off rather than rejecting mail.
    """
    if header is None:
        return default
    words = {w.strip().lower() for w in header.replace(",", " ").split()}
    if "none" in words or "off" in words:
        return TrackingOptions()
    if "all" in words:
        return TrackingOptions(True, True, True)
    return TrackingOptions(
        opens=bool(words & {"opens", "open"}),
        clicks=bool(words & {"clicks", "click"}),
        unsubscribe=bool(words & {"unsubscribe", "unsubscribes", "unsub"}),
    )


def campaign_tag(value: str | None) -> str | None:
    """``X-Mtaserver-Campaign``: printable ASCII, trimmed, at most 128 characters."""
    if value is None:
        return None
    tag = "".join(c for c in value if 0x20 <= ord(c) < 0x7F).strip()[:128]
    return tag or None


class Pipeline:
    def __init__(
        self,
        *,
        spool: Spool,
        new_queue_id: Callable[[float], str],
        hostname: str,
        max_header_size: int | None = None,
        max_mime_depth: int = 50,
        tracker: Tracker | None = None,
        signer: DkimSigner | None = None,
        tracking_defaults: Callable[[str | None], TrackingOptions] | None = None,
    ) -> None:
        self._spool = spool
        self._new_queue_id = new_queue_id
        self._hostname = hostname
        self._max_header_size = max_header_size
        self._max_mime_depth = max_mime_depth
        self._tracker = tracker
        self._signer = signer
        self._tracking_defaults = tracking_defaults or (lambda user: TrackingOptions())

    async def submit(self, sub: Submission, header: Header | None = None) -> str:
        """Queue the message durably; return its queue id.

        ``header``: ``sub.data`` already split by ``split_header`` (the handler's From:
        check), so cleanup does not split it again.

        Raises PrepareError (content refused: its ``reply`` says why) or whatever storage
        raised (logged here once, with the queue id).
        """
        queue_id = self._new_queue_id(sub.received_at)
        try:
            msg = await self.prepare(sub, queue_id, header)
            await self._spool.enqueue(msg)
        except PrepareError as exc:
            log.info(kv(queue_id=queue_id, event="rejected", reply=exc.reply, user=sub.user,
                        client_ip=sub.client_ip))  # fmt: skip
            raise
        except Exception as exc:
            log.error(
                kv(queue_id=queue_id, event="enqueue_failed", user=sub.user,
                   client_ip=sub.client_ip, error=type(exc).__name__),
                exc_info=(type(exc), exc, exc.__traceback__),
            )  # fmt: skip
            raise
        if log.isEnabledFor(logging.INFO):  # kv() formatting is not free at 1000s/s
            log.info(
                kv(queue_id=queue_id, event="queued", user=sub.user, client_ip=sub.client_ip,
                   sender=f"<{sub.sender}>", size=len(msg.data), nrcpt=len(msg.recipients),
                   message_id=f"<{msg.message_id}>", tls=sub.tls_version,
                   listener=sub.listener)
            )  # fmt: skip
        return queue_id

    async def prepare(
        self, sub: Submission, queue_id: str, header: Header | None = None
    ) -> PreparedMessage:
        cleaned = cleanup(
            sub,
            queue_id=queue_id,
            hostname=self._hostname,
            max_header_size=self._max_header_size,
            max_mime_depth=self._max_mime_depth,
            header=header,
        )
        data = cleaned.data
        recipients = tuple(PreparedRecipient(address=a) for a in sub.recipients)
        options = tracking_options(cleaned.track, self._tracking_defaults(sub.user))
        if self._tracker is not None and options.any:
            recipients = await self._tracker.personalize(
                queue_id, data, sub.recipients, options.opens, options.clicks,
                options.unsubscribe, sender=sub.sender,
            )  # fmt: skip
        if self._signer is not None:
            data = await self._signer.sign(data, cleaned.fields, cleaned.body)
            signed = []
            for r in recipients:
                if r.data is not None:
                    r = PreparedRecipient(address=r.address, data=await self._signer.sign(r.data))
                signed.append(r)
            recipients = tuple(signed)
        if sub.dropped:
            reasons = dict(sub.dropped)
            recipients = tuple(
                PreparedRecipient(r.address, r.data, suppressed=reasons[r.address])
                if r.address in reasons
                else r
                for r in recipients
            )
        return PreparedMessage(
            queue_id=queue_id,
            sender=sub.sender,
            recipients=recipients,
            data=data,
            user=sub.user,
            client_ip=sub.client_ip,
            received_at=sub.received_at,
            message_id=cleaned.message_id,
            campaign=campaign_tag(cleaned.campaign),
            not_before=sub.not_before,
        )
