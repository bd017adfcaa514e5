"""What an inbound bounce or complaint does: spool updates, events and suppressions."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from mtaserver.clock import Clock
from mtaserver.dsn import ParseTimeout, parse_bounce_async, reason_kind_of, reason_of
from mtaserver.inbound.ports import Queue, Suppressor
from mtaserver.log import get_logger, kv
from mtaserver.model import (
    BouncedRecipient,
    BounceKind,
    BounceReport,
    Event,
    RecipientState,
    RecipientUpdate,
)
from mtaserver.verp import Verp

log = get_logger("inbound")


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
