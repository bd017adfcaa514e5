"""Fires due trigger steps: compose, prepare, and queue each with its step marked, at once.

Clock-driven: the runner asks the store for steps due at ``clock.now()``, at most
``batch`` at a time, composes each through :class:`OutreachSender` and commits the batch's
messages with the store's ``settle_op`` in ONE transaction. A crash (even ``kill -9``) before the
commit leaves every step pending, so it fires after the restart; after the commit the
steps are fired and their mail is queued — never both lost, never twice. Steps of one
process only: the daemon runs one runner.

A step whose contact has lost consent, whose trigger was disabled, or whose template is
gone is settled ``skipped`` with the reason, so it does not come back every poll.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from mtaserver.clock import Clock
from mtaserver.log import get_logger, kv
from mtaserver.outreach.merge import EventData, MergeInput
from mtaserver.outreach.send import Outgoing, OutreachSender, Resolved, Sender
from mtaserver.prepare import PrepareError
from mtaserver.storage.sqlite.journeys import DueStep, JourneyStore, Settle, StepGone

log = get_logger("journeys")

BATCH: Final = 100  # steps per transaction
POLL: Final = 1.0  # seconds between looks at the due index when nothing is due


@dataclass(frozen=True, slots=True)
class RunStats:
    fired: int = 0
    skipped: int = 0


class StepRunner:
    def __init__(
        self,
        store: JourneyStore,
        sender: OutreachSender,
        clock: Clock,
        *,
        batch: int = BATCH,
        poll: float = POLL,
    ) -> None:
        self.store = store
        self.sender = sender
        self.clock = clock
        self.batch = batch
        self.poll = poll

    async def run(self) -> None:
        """Forever: fire what is due, then sleep until the next step or ``poll``."""
        while True:
            stats = await self.run_once()
            if stats.fired + stats.skipped >= self.batch:
                continue  # more may be due right now
            await self.clock.sleep(self.poll)

    async def run_once(self) -> RunStats:
        """Fire one batch of due steps; what was done."""
        now = self.clock.now()
        due = await self.store.due(now, self.batch)
        if not due:
            return RunStats()
        outgoing: list[Outgoing] = []
        settles: list[Settle] = []
        resolved: dict[tuple[str, str, Sender], Resolved] = {}  # once per batch each
        for step in due:
            result = await self._compose(step, resolved)
            if isinstance(result, Outgoing):
                outgoing.append(result)
                settles.append(Settle(step.id, "fired", queue_id=result.message.queue_id))
            else:
                settles.append(Settle(step.id, "skipped", reason=result))
        try:
            await self.sender.commit(outgoing, self.store.settle_op(settles, self.clock.now()))
        except StepGone as exc:  # cancelled between the read and now: redo without it
            log.info(kv(event="journey_step_raced", error=str(exc)))
            return RunStats()
        skipped = len(settles) - len(outgoing)
        for step, s in zip(due, settles, strict=True):
            log.info(kv(event="journey_step", trigger=step.trigger.name, step=step.step,
                        contact=step.contact.address, owner=step.contact.owner,
                        state=s.state, queue_id=s.queue_id, reason=s.reason))  # fmt: skip
        return RunStats(len(outgoing), skipped)

    async def _compose(
        self, step: DueStep, resolved: dict[tuple[str, str, Sender], Resolved]
    ) -> Outgoing | str:
        t = step.trigger
        if not t.enabled:
            return "trigger disabled"
        if step.step >= len(t.steps):
            return "step removed from the trigger"
        event = None
        if step.event_name is not None:
            event = EventData(step.event_name, step.event_properties, step.event_at)
        campaign = {"name": t.name, "trigger": t.name, "step": step.step}
        key = (step.contact.owner, t.steps[step.step].template, Sender(t.from_email, t.from_name))
        try:
            if key not in resolved:
                resolved[key] = await self.sender.resolve(*key)
            out = await self.sender.compose(
                resolved[key], step.contact, MergeInput(event=event, campaign=campaign),
                tags={"trigger": t.name, "trigger_id": step.trigger_id, "step": step.step},
                campaign=f"trigger:{t.name}",
            )  # fmt: skip
        except PrepareError as exc:  # the pipeline refused the message: it never will take it
            return f"refused: {exc.reply}"
        if isinstance(out, Outgoing):
            return out
        return f"{out.reason}: {out.detail}" if out.detail else out.reason
