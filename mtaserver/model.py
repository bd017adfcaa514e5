"""The values that flow between stages.

Every stage boundary is one of these frozen dataclasses: a stage receives a value, does
its one job, and hands a new value on. This module imports nothing of ours, so any stage
may depend on it and it depends on no stage (Postfix passes ``DELIVER_REQUEST`` records
between daemons in the same spirit). Mail content is ``bytes`` end to end.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


class RecipientState(enum.StrEnum):
    """Where one recipient of a queued message stands."""

    QUEUED = "queued"  # waiting for next_attempt
    LEASED = "leased"  # claimed by the scheduler until lease_until
    HELD = "held"  # held by an operator; never claimed
    DELIVERED = "delivered"
    BOUNCED = "bounced"  # failed permanently or expired; final
    SUPPRESSED = "suppressed"  # dropped because the address is suppressed; final


FINAL_STATES = frozenset(
    {RecipientState.DELIVERED, RecipientState.BOUNCED, RecipientState.SUPPRESSED}
)
# The same, as an SQL list for ``state IN …`` / ``NOT IN …``.
FINAL_STATES_SQL = "(" + ",".join(sorted(f"'{s.value}'" for s in FINAL_STATES)) + ")"


class Disposition(enum.StrEnum):
    """What one delivery attempt means for a recipient."""

    DELIVERED = "delivered"
    DEFERRED = "deferred"  # try again later
    BOUNCED = "bounced"  # permanent failure


class BounceKind(enum.StrEnum):
    HARD = "hard"
    SOFT = "soft"


@dataclass(frozen=True, slots=True)
class Submission:
    """A message as the submission listener accepted it, before cleanup."""

    sender: str  # envelope MAIL FROM, "" for the null sender
    recipients: tuple[str, ...]
    data: bytes  # DATA content, CRLF line ends, dot-unstuffed
    client_ip: str
    helo: str
    user: str | None  # authenticated user; None for a trusted-network client
    tls_version: str | None  # e.g. "TLSv1.3"; None when plaintext
    listener: str  # listener name, for logs and metrics
    received_at: float  # unix time
    # Recipients accepted only to be dropped (suppressed, with "accept-and-drop"): address,
    # reason. They are recorded with a `suppressed` event and never delivered.
    dropped: tuple[tuple[str, str], ...] = ()
    not_before: float | None = None  # RFC 4865 HOLDFOR/HOLDUNTIL: queue until this time


@dataclass(frozen=True, slots=True)
class PreparedRecipient:
    """One recipient of a prepared message.

    ``data`` is set when this recipient gets its own copy of the message (tracking tokens
    are per recipient); ``None`` means the message's shared ``data``.
    """

    address: str
    data: bytes | None = None
    suppressed: str | None = None  # reason: stored as final SUPPRESSED, never delivered


@dataclass(frozen=True, slots=True)
class PreparedMessage:
    """A message after cleanup and signing: exactly the bytes that go on the wire."""

    queue_id: str
    sender: str
    recipients: tuple[PreparedRecipient, ...]
    data: bytes
    user: str | None
    client_ip: str
    received_at: float
    message_id: str = ""  # the Message-ID header value, without angle brackets
    campaign: str | None = None
    dsn: bool = True  # send an RFC 3464 bounce to the sender on permanent failure
    is_dsn: bool = False  # this message is itself a DSN: never bounce it
    not_before: float | None = None  # scheduled send: recipients are first due at this time
    batch_id: str | None = None  # a send batch: cancel/pause act on all its messages


@dataclass(frozen=True, slots=True)
class JobRecipient:
    """A recipient inside a delivery job; ``idx`` is its position in the message."""

    idx: int
    address: str
    attempts: int  # attempts made before this one


@dataclass(frozen=True, slots=True)
class DeliveryJob:
    """Leased work: one message body to one destination domain for some recipients."""

    queue_id: str
    sender: str
    domain: str  # lower-cased recipient domain
    recipients: tuple[JobRecipient, ...]
    data: bytes
    received_at: float
    lease_until: float
    user: str | None = None
    dsn: bool = True
    is_dsn: bool = False
    release_at: float | None = None  # a scheduled message's release (send_at, HOLDFOR)

    @property
    def queued_since(self) -> float:
        """Where its queue lifetime and delay warning count from: the later of acceptance
        and release."""
        return (
            self.received_at if self.release_at is None else max(self.received_at, self.release_at)
        )


@dataclass(frozen=True, slots=True)
class SmtpReply:
    """An SMTP reply as received (or synthesized for a local failure)."""

    code: int
    text: str
    enhanced: str | None = None  # RFC 3463 status, e.g. "5.1.1"

    def __str__(self) -> str:
        parts = [str(self.code)]
        if self.enhanced:
            parts.append(self.enhanced)
        parts.append(self.text)
        return " ".join(p for p in parts if p)


@dataclass(frozen=True, slots=True)
class RecipientResult:
    """The outcome of one attempt for one recipient, as delivery saw it."""

    idx: int
    address: str
    disposition: Disposition
    reply: SmtpReply
    mx: str | None = None  # MX host name tried last
    ip: str | None = None
    tls: str | None = None  # negotiated protocol, e.g. "TLSv1.3"
    cipher: str | None = None
    retry_after: float | None = None  # seconds, when the reply carried a hint


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """Everything one attempt learned about one job."""

    queue_id: str
    domain: str
    results: tuple[RecipientResult, ...]
    started_at: float
    finished_at: float


@dataclass(frozen=True, slots=True)
class RecipientUpdate:
    """What the spool must record for one recipient after an attempt (policy applied)."""

    queue_id: str
    idx: int
    state: RecipientState
    reply: str  # reply text to keep as last_reply
    next_attempt: float | None = None  # for QUEUED
    attempted: bool = True  # counts as an attempt


@dataclass(frozen=True, slots=True)
class Classification:
    """The meaning of a failure reply or bounce, from the classification table."""

    category: str  # e.g. "unknown-recipient", "mailbox-full", "rate-limited"
    kind: BounceKind
    status: str | None = None  # the most specific RFC 3463 status found


@dataclass(frozen=True, slots=True)
class BouncedRecipient:
    """One recipient reported by an asynchronous bounce, DSN or complaint."""

    recipient: str
    action: str  # "failed", "delayed", "delivered", "complaint"
    status: str | None
    reply_code: int | None
    diagnostic: str
    remote_mta: str | None
    category: str
    kind: BounceKind


@dataclass(frozen=True, slots=True)
class BounceReport:
    """What one inbound bounce or complaint message says."""

    recipients: tuple[BouncedRecipient, ...]
    is_complaint: bool = False
    original_message_id: str | None = None
    original_queue_id: str | None = None
    reporting_mta: str | None = None


@dataclass(frozen=True, slots=True)
class Event:
    """A row of the events table: one state change worth keeping."""

    type: str
    at: float
    queue_id: str | None = None
    recipient: str | None = None
    data: tuple[tuple[str, str | int | float | bool | None], ...] = field(default=())


@dataclass(frozen=True, slots=True)
class MxHost:
    """One host to try (mx → delivery): its name (for TLS, logs), its addresses, IPv4 first."""

    name: str
    preference: int
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Route:
    """The hosts to try for a domain, in order."""

    domain: str
    hosts: tuple[MxHost, ...]
    implicit: bool = False  # no MX records: the domain's own address records


@dataclass(frozen=True, slots=True)
class RouteError:
    """Why a domain cannot be routed now (DEFERRED) or ever (BOUNCED)."""

    domain: str
    disposition: Disposition
    reply: SmtpReply


@dataclass(frozen=True, slots=True)
class RoutePolicy:
    """How delivery talks to one destination; the scheduler picks it from config."""

    tls: str = "opportunistic"  # "opportunistic" | "required" | "none"
    port: int = 25
    relay_host: str | None = None  # "host" or "host:port": send everything there instead
    max_messages_per_connection: int = 100
    connect_timeout: float = 30.0
    command_timeout: float = 60.0
    data_timeout: float = 300.0
    idle_timeout: float = 10.0  # how long an idle connection is kept for reuse
    # Unix time (``Clock.now``) by which the attempt must be over; the scheduler sets it
    # before the job's lease runs out. None: no limit but the timeouts above.
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class QueueGauges:
    """What waits in the queue right now (the metrics scrape)."""

    by_state: Mapping[str, int]
    by_destination: tuple[tuple[str, int], ...]  # the top N domains, most recipients first
    other: int  # recipients of every domain outside the top N
    oldest_age: float  # seconds since the oldest waiting message was received


@dataclass(frozen=True, slots=True)
class Stats:
    """Delivery and engagement counts of a cohort (see :mod:`mtaserver.tracking.stats`)."""

    messages: int
    accepted: int
    delivered: int
    deferred: int
    bounced_hard: int
    bounced_soft: int
    complaints: int
    unsubscribes: int
    unique_human_opens: int
    unique_human_clicks: int
    human_opens: int
    human_clicks: int
    machine_opens: int
    machine_clicks: int

    @property
    def bounced(self) -> int:
        return self.bounced_hard + self.bounced_soft

    def rates(self) -> dict[str, float | None]:
        def ratio(a: int, b: int) -> float | None:
            return round(a / b, 4) if b else None

        return {
            "delivery_rate": ratio(self.delivered, self.accepted),
            "bounce_rate": ratio(self.bounced, self.accepted),
            "open_rate": ratio(self.unique_human_opens, self.delivered),
            "click_rate": ratio(self.unique_human_clicks, self.delivered),
            "click_to_open_rate": ratio(self.unique_human_clicks, self.unique_human_opens),
            "unsubscribe_rate": ratio(self.unsubscribes, self.delivered),
            "complaint_rate": ratio(self.complaints, self.delivered),
        }

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = asdict(self)
        out["bounced"] = self.bounced
        out["rates"] = self.rates()
        return out


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One row of the event log as the feed and webhooks show it."""

    id: int
    at: float
    type: str
    queue_id: str | None
    recipient: str | None
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "type": self.type,
            "queue_id": self.queue_id,
            "recipient": self.recipient,
            "data": self.data,
        }


@dataclass(frozen=True, slots=True)
class TrackedRecipient:
    """What the queue knows about a tracked recipient."""

    address: str
    sender: str
    campaign: str | None
    user: str | None
    state: str
    delivered_at: float | None


Key = tuple[str, int]  # (queue_id, recipient idx) as a tracking token names it
# One open or click as the writer gets it: (at, type, queue_id, idx, user_agent,
# client_ip, machine, reason, proxy, url). A plain tuple, not a NamedTuple: one is built
# per hit on the event loop.
_Opt = str | None
HitRow = tuple[float, str, str, int, str, str, bool, _Opt, _Opt, _Opt]


@dataclass(frozen=True, slots=True)
class Redaction:
    """How a privacy erase rewrites text: ``address`` (a whole word) becomes ``token``."""

    address: str  # normalized, lower case
    token: str
    pattern: re.Pattern[str]

    def sub(self, text: str | None) -> str | None:
        return None if text is None else self.pattern.sub(self.token, text)

    def scrub(self, value: Any) -> Any:
        """``value`` (decoded JSON) with the address replaced in every string inside it."""
        if isinstance(value, str):
            return self.pattern.sub(self.token, value)
        if isinstance(value, list):
            return [self.scrub(v) for v in value]
        if isinstance(value, dict):
            return {k: self.scrub(v) for k, v in value.items()}
        return value


@dataclass(frozen=True, slots=True)
class ErasePlan:
    """What a privacy erase found to rewrite (read on the reader, applied in batches)."""

    recipients: tuple[int, ...] = ()  # recipient rows naming or quoting the address
    messages: tuple[str, ...] = ()  # messages whose sender/user/message_id mention it
    bodies: tuple[str, ...] = ()  # queue ids whose content mentions it
    events: tuple[int, ...] = ()
    other: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # table → rowids

    def empty(self) -> bool:
        return not (self.recipients or self.messages or self.bodies or self.events or self.other)
