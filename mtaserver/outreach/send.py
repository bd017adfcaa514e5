"""One contact, one stored template → one prepared message (or the reason it is skipped).

The order is the send API's: consent first (only ``subscribed`` contacts get mail; an
unconfirmed or unsubscribed one gets nothing), the sender binding (the owner must own the
``from`` domain), the stored template rendered with :func:`merge_data`, the message built
by the send API's composer, suppressions checked (a suppressed recipient is stored as
dropped, so the queue records it), then the pipeline's ``prepare`` (cleanup → tracking →
DKIM). Nothing is queued here: :meth:`OutreachSender.commit` stores a batch of prepared
messages with the caller's own bookkeeping (a trigger step marked fired, a campaign's
progress) in ONE transaction, so the mail is queued exactly when the step is recorded.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from mtaserver.clock import Clock
from mtaserver.model import Event, PreparedMessage, Submission
from mtaserver.outreach.merge import LinkBuilder, MergeInput, merge_data, no_links
from mtaserver.render import RenderBudget, TemplateCache
from mtaserver.sendapi import StoredTemplate, compose, parse_mail_send
from mtaserver.storage.sqlite.contacts import Contact

T = TypeVar("T")
EVENT = "outreach_message"  # the queue event naming what a message was sent for


class Templates(Protocol):
    async def info(self, ref: str) -> _TemplateInfo | None: ...

    async def get(self, template_id: str) -> StoredTemplate | None: ...


class _TemplateInfo(Protocol):
    @property
    def template_id(self) -> str: ...


class _Sender(Protocol):
    def owns(self, domain: str) -> bool: ...


class Users(Protocol):
    async def lookup(self, name: str) -> tuple[_Sender, str] | None: ...


class Suppressions(Protocol):
    async def check(self, address: str, sender_domain: str | None) -> object | None: ...


class Preparer(Protocol):
    async def prepare(self, sub: Submission, queue_id: str) -> PreparedMessage: ...


class Queue(Protocol):
    """The spool's one-transaction intake (``Spool.enqueue_many``)."""

    async def enqueue_many(
        self,
        messages: Sequence[PreparedMessage],
        events: Sequence[Event] = (),
        *,
        also: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Skipped:
    """No message for this contact; ``reason`` is a short word for logs and stats
    (``unsubscribed``, ``unconfirmed``, ``sender``, ``template``, ``render``)."""

    address: str
    reason: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A prepared message and its queue event, ready for :meth:`OutreachSender.commit`.

    ``suppressed`` is the suppression reason when the recipient is stored as dropped.
    """

    message: PreparedMessage
    event: Event
    suppressed: str | None = None


@dataclass(frozen=True, slots=True)
class Sender:
    """The ``from`` of a marketing message."""

    email: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Resolved:
    """The per-batch part of composing (:meth:`OutreachSender.resolve`): who sends, from
    which domain (the DKIM ``d=``), with which stored template version — or the
    ``(reason, detail)`` every message of the batch is skipped for."""

    owner: str
    from_: Sender
    domain: str
    template_id: str | None
    stored: StoredTemplate | None
    problem: tuple[str, str] | None = None


def _refused(owner: str, contact: Contact) -> Skipped | None:
    """The per-contact refusals that come before anything is looked up."""
    if contact.owner != owner:
        return Skipped(contact.address, "owner", "the contact belongs to another user")
    if contact.consent_status != "subscribed":
        return Skipped(contact.address, contact.consent_status)
    return None


class OutreachSender:
    """Composes and prepares marketing mail for one owner's contacts; see module doc."""

    def __init__(
        self,
        *,
        templates: Templates,
        users: Users,
        suppressions: Suppressions,
        preparer: Callable[[], Preparer],
        queue: Queue,
        clock: Clock,
        new_queue_id: Callable[[float], str],
        hostname: str,
        links: LinkBuilder = no_links,
        budget: RenderBudget | None = None,
    ) -> None:
        self._templates = templates
        self._users = users
        self._suppressions = suppressions
        self._preparer = preparer
        self._queue = queue
        self._clock = clock
        self._new_queue_id = new_queue_id
        self._hostname = hostname
        self._links = links
        self._budget = budget or RenderBudget()
        self._cache = TemplateCache()  # used on the event loop's thread only

    async def resolve(self, owner: str, template: str, from_: Sender) -> Resolved:
        """What every message of a batch from ``owner`` shares, looked up once: the user and
        whether it owns the ``from`` domain (the DKIM signing domain), and the stored
        template's current version. A batch composes from one version even if the template
        is edited meanwhile."""
        domain = from_.email.rpartition("@")[2].lower()
        found = await self._users.lookup(owner)
        if found is None or not found[0].owns(domain):
            detail = f"user {owner!r} does not own domain {domain!r}"
            return Resolved(owner, from_, domain, None, None, ("sender", detail))
        info = await self._templates.info(template)
        stored = None if info is None else await self._templates.get(info.template_id)
        if info is None or stored is None:
            problem = ("template", f"no stored template {template!r}")
            return Resolved(owner, from_, domain, None, None, problem)
        return Resolved(owner, from_, domain, info.template_id, stored)

    async def compose_and_prepare(
        self,
        owner: str,
        template: str,
        contact: Contact,
        data: MergeInput,
        *,
        from_: Sender,
        tags: Mapping[str, str | int | None] | None = None,
        campaign: str | None = None,
        not_before: float | None = None,
    ) -> Outgoing | Skipped:
        """The prepared message for ``contact`` from stored template ``template`` (id or
        name), or why there is none: :meth:`resolve` then :meth:`compose` for one message.
        ``tags`` go into the queue event (trigger, step, campaign ids for stats);
        ``campaign`` is the message's campaign tag."""
        early = _refused(owner, contact)
        if early is not None:  # checked before any lookup, as always
            return early
        resolved = await self.resolve(owner, template, from_)
        return await self.compose(resolved, contact, data, tags=tags, campaign=campaign,
                                  not_before=not_before)  # fmt: skip

    async def compose(
        self,
        resolved: Resolved,
        contact: Contact,
        data: MergeInput,
        *,
        tags: Mapping[str, str | int | None] | None = None,
        campaign: str | None = None,
        not_before: float | None = None,
    ) -> Outgoing | Skipped:
        """One contact's message from what :meth:`resolve` found (see
        :meth:`compose_and_prepare`); the checks run in the same order."""
        owner, from_, domain = resolved.owner, resolved.from_, resolved.domain
        addr = contact.address
        early = _refused(owner, contact)
        if early is not None:
            return early
        if resolved.problem is not None or resolved.stored is None:
            why, detail = resolved.problem or ("template", "no stored template")
            return Skipped(addr, why, detail)
        now = self._clock.now()
        queue_id = self._new_queue_id(now)
        merged = merge_data(contact, data, self._links(queue_id, owner, addr, domain))
        payload = {
            "from": {"email": from_.email} | ({"name": from_.name} if from_.name else {}),
            "personalizations": [{"to": [{"email": addr}], "dynamic_template_data": merged}],
            "template_id": resolved.template_id,
        }
        parsed = parse_mail_send(payload, now=int(now))
        if not parsed.ok or parsed.request is None:
            return Skipped(addr, "compose", "; ".join(e.message for e in parsed.errors))
        out = compose(parsed.request, domain=self._hostname, cache=self._cache,
                      template=resolved.stored, budget=self._budget, now=now)  # fmt: skip
        if not out.ok:
            return Skipped(addr, "render", "; ".join(e.message for e in out.errors))
        m = out.messages[0]
        hit = await self._suppressions.check(addr, domain)
        reason = None if hit is None else str(getattr(hit, "reason", hit))
        sub = Submission(
            sender=m.envelope_sender, recipients=(addr,), data=m.message,
            client_ip="127.0.0.1", helo="", user=owner, tls_version=None,
            listener="outreach", received_at=now,
            dropped=((addr, reason),) if reason is not None else (),
        )  # fmt: skip
        msg = await self._preparer().prepare(sub, queue_id)
        due = not_before if not_before is not None and not_before > now else None
        msg = replace(msg, not_before=due, campaign=campaign or msg.campaign)
        fields = (*tuple((tags or {}).items()), ("message_id", m.message_id))
        event = Event(type=EVENT, at=now, queue_id=queue_id, recipient=addr, data=fields)
        return Outgoing(msg, event, reason)

    async def commit(
        self,
        outgoing: Sequence[Outgoing],
        also: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        """Queue every message of ``outgoing`` and run ``also`` in the same transaction.

        ``also`` is a write built by the caller's table owner (for example
        ``JourneyStore.fired_op``); if it raises, nothing is stored — neither the messages
        nor the bookkeeping — and the exception propagates. With no messages, ``also``
        still runs (a step whose contact is skipped is still marked done).
        """
        await self._queue.enqueue_many(
            [o.message for o in outgoing], [o.event for o in outgoing], also=also
        )
