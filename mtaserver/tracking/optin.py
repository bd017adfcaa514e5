"""The double opt-in mailer: one confirmation mail per unconfirmed list membership.

However a contact joined a double opt-in list (the API, an import, the CLI — which writes
the database while the daemon runs), its membership row is ``unconfirmed`` until the person
confirms. This loop finds such memberships with no mail queued yet
(:meth:`OptInStore.pending`), builds each confirmation (:mod:`mtaserver.tracking.confirm`)
with a signed link, runs it through the same ``prepare`` as every message (cleanup, DKIM)
and queues a batch in one transaction together with the marks that it was queued
(``optin_sent``): a crash before the commit leaves neither, so nobody gets two and nobody
none. The API wakes it (``nudge``) after a write; otherwise it looks every ``poll``.

On PostgreSQL every node runs this loop over the cluster's memberships. When two queue the
same confirmation at once, the mark's unique key keeps the first; the other's transaction,
its copy of the mail included, rolls back. That is the design working, not a failure: the
loser logs ``optin_already_queued`` (info) and reads what is still pending at once; only an
enqueue that failed with every membership still pending is ``optin_pass_failed`` (error).

The mail comes from the list's ``from`` setting when the owner owns that domain, else from
``no-reply@`` the owner's first sending domain (alphabetically); an owner with no domain
cannot send, and its memberships wait (logged once per pass).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from mtaserver.clock import Clock
from mtaserver.log import get_logger, kv
from mtaserver.model import Event, PreparedMessage, Submission
from mtaserver.storage.sqlite.optin import OptInStore, PendingConfirm
from mtaserver.tracking.confirm import confirm_message
from mtaserver.tracking.consent_tokens import ConsentTokens, confirm_url

log = get_logger("optin")
BATCH = 200


class Preparer(Protocol):
    async def prepare(self, sub: Submission, queue_id: str) -> PreparedMessage: ...


class Owner(Protocol):
    @property
    def domains(self) -> frozenset[str]: ...


class Owners(Protocol):
    async def lookup(self, name: str) -> tuple[Owner, str] | None: ...


class Enqueuer(Protocol):
    async def enqueue_many(
        self, messages: Sequence[PreparedMessage], events: Sequence[Event] = (), *,
        also: Callable[..., None] | None = None,
    ) -> None: ...  # fmt: skip


@dataclass(frozen=True, slots=True)
class Built:
    pending: PendingConfirm
    message: PreparedMessage


def from_address(p: PendingConfirm, domains: frozenset[str]) -> str | None:
    """The list's own sender when the owner owns its domain, else no-reply@first domain."""
    own = p.settings.from_address
    if own and own.rpartition("@")[2].lower() in domains:
        return own
    return f"no-reply@{sorted(domains)[0]}" if domains else None


class OptInMailer:
    def __init__(
        self, store: OptInStore, tokens: ConsentTokens, base_url: str, owners: Owners,
        preparer: Callable[[], Preparer], spool: Enqueuer, new_queue_id: Callable[[float], str],
        clock: Clock, *, poll: float = 5.0,
    ) -> None:  # fmt: skip
        self.store, self.tokens, self.base_url = store, tokens, base_url
        self.owners, self.preparer, self.spool = owners, preparer, spool
        self.new_queue_id, self.clock, self.poll = new_queue_id, clock, poll
        self._wake = asyncio.Event()
        self.sent = 0

    def nudge(self) -> None:
        """Something joined a list: look now rather than at the next poll."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            self._wake.clear()
            try:
                await self.pass_once()
            except Exception as exc:  # a full disk, a busy database: try again next poll
                log.error(kv(event="optin_pass_failed", error=f"{type(exc).__name__}: {exc}"))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll)

    async def pass_once(self) -> int:
        """Queue every pending confirmation; how many were queued."""
        done = 0
        after = (0, 0)
        while True:
            batch = await self.store.pending(BATCH, after)
            if not batch:
                return done
            built = await self._build(batch)
            if built:
                if not await self._queue(built, after):
                    continue  # another node queued some of these first: read again from here
                done += len(built)
            after = (batch[-1].list_id, batch[-1].contact_id)
            if len(batch) < BATCH:
                return done

    async def _queue(self, built: Sequence[Built], after: tuple[int, int]) -> bool:
        """Queue the mails with their marks in one transaction; False if another node's
        marks for some of them won (ours rolled back with our mails: nothing went wrong)."""
        marks = [(b.pending.list_id, b.pending.contact_id, b.message.queue_id) for b in built]
        try:
            await self.spool.enqueue_many(
                [b.message for b in built], also=self.store.mark_sent_op(marks, self.clock.now())
            )
        except Exception:
            if not await self._taken_elsewhere(built, after):
                raise  # a full disk, a lost database: optin_pass_failed
            log.info(kv(event="optin_already_queued", memberships=len(built),
                        by="another node", retry="now"))  # fmt: skip
            return False
        self.sent += len(built)
        for b in built:
            log.info(kv(event="optin_queued", queue_id=b.message.queue_id,
                        owner=b.pending.owner, list=b.pending.list_name))  # fmt: skip
        return True

    async def _taken_elsewhere(self, built: Sequence[Built], after: tuple[int, int]) -> bool:
        """Has one of ``built`` left the pending set since it was read? Then the enqueue
        failed on its mark (another node — or a second mailer on this database — queued it
        first; PostgreSQL's unique mark rolls the loser back): a lost race, not a failure."""
        try:
            now = await self.store.pending(BATCH, after)
        except Exception:
            return False  # the database itself fails: report the enqueue's error
        left = {(p.list_id, p.contact_id) for p in now}
        # A full batch may end before some of ours (new memberships sort in between).
        last = (now[-1].list_id, now[-1].contact_id) if len(now) == BATCH else None
        return any(
            key not in left and (last is None or key <= last)
            for key in ((b.pending.list_id, b.pending.contact_id) for b in built)
        )

    async def _build(self, batch: Sequence[PendingConfirm]) -> list[Built]:
        preparer = self.preparer()
        domains: dict[str, frozenset[str]] = {}
        out: list[Built] = []
        for p in batch:
            if p.owner not in domains:
                found = await self.owners.lookup(p.owner)
                domains[p.owner] = found[0].domains if found else frozenset()
                if not domains[p.owner]:
                    log.warning(kv(event="optin_no_sender", owner=p.owner,
                                   fix="give the user a sending domain"))  # fmt: skip
            sender = from_address(p, domains[p.owner])
            if sender is None:
                continue
            now = self.clock.now()
            url = confirm_url(self.tokens, self.base_url, p.owner, p.list_name, p.address, now)
            data = confirm_message(
                from_address=sender, to=p.address, list_name=p.list_name, confirm_url=url,
                subject=p.settings.subject, body=p.settings.body,
            )  # fmt: skip
            sub = Submission(
                sender=sender, recipients=(p.address,), data=data, client_ip="", helo="",
                user=p.owner, tls_version=None, listener="optin", received_at=now,
            )  # fmt: skip
            out.append(Built(p, await preparer.prepare(sub, self.new_queue_id(now))))
        return out
