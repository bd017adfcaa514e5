"""The campaign feeder: starts due runs and feeds their snapshot into the queue.

Each :meth:`Feeder.tick` starts the runs that are due (one snapshot statement each; a cron
campaign's next fire computed by :mod:`mtaserver.cron` in its zone), then feeds one batch
of each running run: the pending rows are read by keyset, composed and prepared through the
outreach primitive, and committed together with their rows' new state in one transaction,
so a ``kill -9`` between batches neither loses nor doubles a message. Between batches the
loop yields; only one batch per run is in memory.

A local-time run's rows are due at their contact's own wall time; the feeder reads only the
due ones (by the pending index) and the run is done once none is pending. A campaign whose
run cannot start (its segment was deleted or no longer compiles) is marked ``failed`` with
the reason, logged once, and the others keep feeding.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from mtaserver.app.journeys import outreach_sender
from mtaserver.app.mail import MailParts
from mtaserver.app.service import Service, SimpleService
from mtaserver.campaigns import EARLIEST, LocalDue, wall_of
from mtaserver.clock import Clock
from mtaserver.config import Config
from mtaserver.cron import CronError, next_fire, parse, zone
from mtaserver.log import get_logger, kv
from mtaserver.outreach import MergeInput, Outgoing, OutreachSender, Sender
from mtaserver.prepare import PrepareError
from mtaserver.ratelimit import RateLimiter
from mtaserver.segments import SegmentError
from mtaserver.storage.sqlite.campaigns import (
    BATCH,
    Campaign,
    CampaignStore,
    Run,
    RunStopped,
    list_audience_sql,
)
from mtaserver.storage.sqlite.segments import SegmentStore, select_sql

log = get_logger("campaigns")
Audience = tuple[str, tuple[object, ...]]  # SQL of (contact_id, address) rows, its parameters


class Feeder:
    def __init__(
        self, store: CampaignStore, segments: SegmentStore, sender: OutreachSender,
        clock: Clock, *, batch: int = BATCH, poll: float = 1.0, max_in_flight: int = 20_000,
        user_rate: Callable[[], RateLimiter | None] = lambda: None,
        select: Callable[..., Audience] = select_sql,
        list_sql: Callable[[str, str], Audience] = list_audience_sql,
    ) -> None:  # fmt: skip
        self.store = store
        self.segments = segments
        self.sender = sender
        self.clock = clock
        self.batch = batch
        self.poll = poll
        self.max_in_flight = max_in_flight  # due recipients in the queue before we wait
        self.user_rate = user_rate  # [submission] user_rate, shared with SMTP and the API
        # the backend's audience SQL (segment filter, list members) for the run's snapshot
        self.select, self.list_sql = select, list_sql

    async def run(self) -> None:
        while True:
            if not await self.tick():
                await self.clock.sleep(self.poll)

    async def tick(self) -> bool:
        """Start due runs and feed one batch of each; True if anything was done."""
        busy = False
        for c in await self.store.due(self.clock.now()):
            busy = await self._start(c) or busy
        for run, c in await self.store.running():
            busy = await self._feed(run, c) or busy
            await asyncio.sleep(0)
        # what an interrupted cancel (a killed CLI) left pending, in bounded transactions
        await self.store.cancel_rows()
        return busy

    async def _start(self, c: Campaign) -> bool:
        now = self.clock.now()
        fire_at = c.next_run_at if c.next_run_at is not None else now
        nxt, due_for = None, None
        try:  # anything checked at create that no longer holds fails this campaign only
            if c.schedule == "local":
                due_for = LocalDue(wall_of(fire_at), zone(c.tz or "UTC"))
                if c.cron:
                    nxt = next_fire(parse(c.cron), max(fire_at, now), EARLIEST)
            elif c.schedule == "cron" and c.cron:
                nxt = next_fire(parse(c.cron), max(fire_at, now), zone(c.tz or "UTC"))
            if c.audience_kind == "segment":
                flt = await self.segments.resolve(c.owner, c.audience)
                audience = self.select(c.owner, flt, now=now)
            else:
                audience = self.list_sql(c.owner, c.audience)
        except (SegmentError, CronError) as exc:
            reason = f"cannot start the run for {fire_at:.0f}: {exc}"
            if await self.store.fail(c.id, reason):
                log.warning(kv(event="campaign_failed", campaign=c.name, owner=c.owner,
                               reason=reason))  # fmt: skip
            return True
        run = await self.store.begin_run(c, fire_at, audience, nxt, due_for)
        log.info(kv(event="campaign_run_started", campaign=c.name, owner=c.owner,
                    fire_at=fire_at, audience=run.audience if run else None))  # fmt: skip
        return run is not None

    async def _feed(self, run: Run, c: Campaign) -> bool:
        cap = self.max_in_flight
        if await self.store.due_backlog(self.clock.now(), cap) >= cap:
            return False  # delivery catches up first; shaping applies there
        batch = await self.store.pending(run.id, self.batch)
        if not batch:
            # done only when no row is pending; a local-time run's may be due later
            if await self.store.finish_run(run.id):
                log.info(kv(event="campaign_run_done", campaign=c.name, run=run.id))
            return False
        outgoing: list[Outgoing] = []
        queued: list[tuple[int, str]] = []
        skipped: list[tuple[int, str]] = []
        data = MergeInput(campaign={"name": c.name, "id": c.id})
        rate = self.user_rate()
        resolved = await self.sender.resolve(c.owner, c.template, Sender(c.from_email, c.from_name))
        for contact in batch:
            if rate is not None and not rate.take(c.owner):
                break  # the rest stays pending for a later tick
            try:
                out = await self.sender.compose(
                    resolved, contact, data, tags={"campaign": c.id, "run": run.id},
                    campaign=c.name,
                )  # fmt: skip
            except PrepareError as exc:  # the pipeline refuses this message, now and later
                skipped.append((contact.id, f"refused: {exc.reply}"[:200]))
                continue
            if isinstance(out, Outgoing):
                outgoing.append(out)
                queued.append((contact.id, out.message.queue_id))
            else:
                skipped.append((contact.id, out.reason))
        if not (queued or skipped):
            return False
        try:
            await self.sender.commit(outgoing, also=self.store.fed_op(run.id, queued, skipped))
        except RunStopped:
            return False
        return True


def campaigns_service(cfg: Config, parts: MailParts) -> Service:
    """The feeder in the main process (one feeder per database); after SIGHUP the next
    batch goes through the new config's pipeline."""
    db, clock = parts.spool.db, parts.clock
    feeder = Feeder(CampaignStore(db, clock), SegmentStore(db, clock),
                    outreach_sender(cfg, parts), clock,
                    user_rate=lambda: parts.user_rates.limiter)  # fmt: skip

    async def reload(new: Config) -> None:
        feeder.sender = outreach_sender(new, parts)

    return SimpleService("campaigns", on_run=feeder.run, on_reload=reload)
