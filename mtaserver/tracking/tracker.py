"""Per-recipient copies of a tracked message (the ``personalize`` step of prepare)."""

from __future__ import annotations

import asyncio
import functools
import re

from mtaserver.log import get_logger, kv
from mtaserver.model import PreparedRecipient
from mtaserver.tracking import rewrite
from mtaserver.tracking.tokens import TokenCodec

log = get_logger("tracking")

_UNSUB_FIELDS = frozenset({"list-unsubscribe", "list-unsubscribe-post"})
MAX_COPIES_BYTES = 256 * 1024 * 1024  # size x recipients beyond which mail goes untracked
_INLINE_WORK = 2_000_000  # bytes x recipients rendered on the loop before using a thread
_MAILTO = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+")


class Tracker:
    """Rewrites links, adds the open pixel and the RFC 8058 headers, per recipient.

    ``base_url`` is the public URL of the tracking listener (no trailing slash);
    ``unsubscribe_mailto`` an optional address for the ``mailto:`` List-Unsubscribe URI
    (the token rides in its subject, so whoever reads that mailbox can act on it).
    """

    def __init__(
        self, codec: TokenCodec, base_url: str, unsubscribe_mailto: str | None = None
    ) -> None:
        if not re.fullmatch(r"https?://[!-~]+", base_url):
            raise ValueError(f"tracking base_url must be an http(s) URL, got {base_url!r}")
        if unsubscribe_mailto is not None and not _MAILTO.fullmatch(unsubscribe_mailto):
            raise ValueError(f"bad unsubscribe mailto address {unsubscribe_mailto!r}")
        self.codec = codec
        self.base_url = base_url.rstrip("/")
        self.unsubscribe_mailto = unsubscribe_mailto

    def pixel_url(self, queue_id: str, idx: int) -> str:
        return f"{self.base_url}/o/{self.codec.open_token(queue_id, idx)}.gif"

    def click_url(self, queue_id: str, idx: int, url: str, link: int, links: int) -> str:
        return f"{self.base_url}/c/{self.codec.click_token(queue_id, idx, url, link, links)}"

    def unsubscribe_url(
        self, queue_id: str, idx: int, address: str | None = None, sender_domain: str = ""
    ) -> str:
        token = self.codec.unsubscribe_token(queue_id, idx, address, sender_domain)
        return f"{self.base_url}/u/{token}"

    def unsubscribe_headers(
        self,
        queue_id: str,
        idx: int,
        eol: bytes = b"\r\n",
        address: str | None = None,
        sender_domain: str = "",
    ) -> bytes:
        """``List-Unsubscribe`` (https first, then mailto) and ``List-Unsubscribe-Post``.

        With ``address`` (and the sender's domain) the token carries them, encrypted, so
        the unsubscribe still works after retention has dropped the message.
        """
        token = self.codec.unsubscribe_token(queue_id, idx, address, sender_domain)
        uris = [f"<{self.base_url}/u/{token}>"]
        if self.unsubscribe_mailto:
            uris.append(f"<mailto:{self.unsubscribe_mailto}?subject=unsubscribe-{token}>")
        value = ("," + eol.decode() + " ").join(uris)
        return (
            f"List-Unsubscribe: {value}".encode("ascii")
            + eol
            + b"List-Unsubscribe-Post: List-Unsubscribe=One-Click"
            + eol
        )

    async def personalize(
        self,
        queue_id: str,
        data: bytes,
        recipients: tuple[str, ...],
        opens: bool,
        clicks: bool,
        unsubscribe: bool,
        *,
        sender: str = "",
    ) -> tuple[PreparedRecipient, ...]:
        """:meth:`personalize_sync`, moved off the event loop when the work is large."""
        if len(data) * len(recipients) < _INLINE_WORK:
            return self.personalize_sync(
                queue_id, data, recipients, opens, clicks, unsubscribe, sender=sender
            )
        return await asyncio.to_thread(
            functools.partial(
                self.personalize_sync,
                queue_id, data, recipients, opens, clicks, unsubscribe, sender=sender,
            )
        )  # fmt: skip

    def personalize_sync(
        self,
        queue_id: str,
        data: bytes,
        recipients: tuple[str, ...],
        opens: bool,
        clicks: bool,
        unsubscribe: bool,
        *,
        sender: str = "",
    ) -> tuple[PreparedRecipient, ...]:
        """One copy per recipient with its own tokens; ``data=None`` where unchanged.

        ``sender`` is the envelope sender: its domain is whose mail an unsubscribe stops.

        A message whose MIME structure cannot be rewritten safely goes out with its HTML
        untouched (still with the unsubscribe headers when asked): tracking never costs a
        delivery.
        """
        if not (opens or clicks or unsubscribe):
            return tuple(PreparedRecipient(r) for r in recipients)
        if len(data) * len(recipients) > MAX_COPIES_BYTES:
            # Per-recipient copies of this message would not fit in memory and the queue.
            log.warning(kv(event="tracking_skipped_too_large", queue_id=queue_id,
                           size=len(data), recipients=len(recipients)))  # fmt: skip
            return tuple(PreparedRecipient(r) for r in recipients)
        try:
            template: rewrite.Template | None = rewrite.parse(data)
        except rewrite.RewriteError as exc:
            log.warning(kv(event="tracking_rewrite_skipped", queue_id=queue_id, reason=str(exc)))
            template = None
        eol = b"\n" if template is None or not _crlf(data, template.header_end) else b"\r\n"
        if template is None:
            template = rewrite.Template(data, _header_end(data), (), (), ())
            if not unsubscribe:
                return tuple(PreparedRecipient(r) for r in recipients)
        n_links = len(template.links)
        track_links = clicks and n_links > 0
        pixel_on = opens and template.has_html
        if not (track_links or pixel_on or unsubscribe):
            return tuple(PreparedRecipient(r) for r in recipients)
        sender_domain = sender.rpartition("@")[2].lower()
        out: list[PreparedRecipient] = []
        for idx, rcpt in enumerate(recipients):

            def url_for(link: int, url: str, idx: int = idx) -> str:
                return self.click_url(queue_id, idx, url, link, n_links)

            body = rewrite.render(
                template,
                url_for if track_links else None,
                self.pixel_url(queue_id, idx) if pixel_on else None,
                self.unsubscribe_headers(queue_id, idx, eol, rcpt, sender_domain)
                if unsubscribe
                else b"",
                _UNSUB_FIELDS if unsubscribe else frozenset(),
            )
            out.append(PreparedRecipient(rcpt, body))
        log.info(
            kv(
                event="tracking_prepared",
                queue_id=queue_id,
                recipients=len(recipients),
                opens=pixel_on,
                links=n_links if track_links else 0,
                unsubscribe=unsubscribe,
            )
        )
        return tuple(out)


def _header_end(data: bytes) -> int:
    from mtaserver.tracking.mime import header_block

    return header_block(data)[0]


def _crlf(data: bytes, header_end: int) -> bool:
    return header_end == 0 or data[:header_end].endswith(b"\r\n")
