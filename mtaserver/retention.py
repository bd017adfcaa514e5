"""Retention: drop kept bodies, old delivery records and old events, a small batch at a time.

Each batch (``[retention] batch_size`` rows, 500 by default) is one write op riding the
shared group commit, so the writer is never held for longer than one small delete and
submissions keep committing between batches. The deletes themselves are the table owners'
(``drop_bodies``/``purge_finished`` on the queue, ``prune_events``, ``prune_failed`` on the
webhook outbox); this module decides when and how much. What counts as old:

- bodies: every recipient final, and the last one became final ``bodies`` ago (the spool
  drops bodies at once when ``bodies`` is 0; the sweep also catches bodies kept under an
  earlier, longer setting);
- records: a message whose recipients are all final since ``records`` ago — the message row
  and its recipients go (their events follow the ``events`` setting);
- events: written ``events`` ago, unless a webhook has yet to deliver them; given-up webhook
  deliveries of that age too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from mtaserver.clock import Clock
from mtaserver.config import Config
from mtaserver.config.retention import RetentionConfig
from mtaserver.errors import StorageError
from mtaserver.log import get_logger, kv

log = get_logger("retention")

_Step = Callable[[float, int], Awaitable[int]]


class FinishedQueue(Protocol):
    async def drop_bodies(self, before: float, limit: int) -> int: ...

    async def purge_finished(self, before: float, limit: int) -> int: ...


class PrunableEvents(Protocol):
    async def prune_events(self, before: float, limit: int) -> int: ...


class PrunableOutbox(Protocol):
    async def prune_failed(self, before: float, limit: int) -> int: ...


@dataclass
class SweepResult:
    bodies: int = 0
    records: int = 0
    events: int = 0
    outbox: int = 0
    batches: list[tuple[str, int]] = field(default_factory=list)  # (kind, rows) per commit


class Retention:
    """The ``retention`` service: one sweep every ``interval``."""

    name = "retention"

    def __init__(
        self,
        queue: FinishedQueue,
        events: PrunableEvents,
        outbox: PrunableOutbox,
        config: RetentionConfig,
        clock: Clock,
    ) -> None:
        self.queue = queue
        self.events = events
        self.outbox = outbox
        self.config = config
        self.clock = clock
        self._stop = asyncio.Event()

    async def sweep(self, now: float | None = None) -> SweepResult:
        """Enforce every limit once, batch by batch, until nothing old is left."""
        t = self.clock.now() if now is None else now
        cfg = self.config
        result = SweepResult()
        steps: list[tuple[str, _Step, float]] = [
            ("bodies", self.queue.drop_bodies, cfg.bodies),
            ("records", self.queue.purge_finished, cfg.records),
            ("events", self.events.prune_events, cfg.events),
            ("outbox", self.outbox.prune_failed, cfg.events),
        ]
        for kind, fn, keep in steps:
            if keep == float("inf"):
                continue
            cutoff = t - keep
            while not self._stop.is_set():
                n = await fn(cutoff, cfg.batch_size)
                if not n:
                    break
                result.batches.append((kind, n))
                setattr(result, kind, getattr(result, kind) + n)
                await asyncio.sleep(0)  # let other writers' ops into the next batch
        return result

    async def start(self) -> None:
        pass

    async def run(self) -> None:
        while not self._stop.is_set():
            try:
                r = await self.sweep()
            except StorageError as exc:
                log.error(kv(event="retention_failed", error=str(exc)))
            else:
                if r.batches:
                    log.info(kv(event="retention_swept", bodies=r.bodies, records=r.records,
                                events=r.events, outbox=r.outbox,
                                batches=len(r.batches)))  # fmt: skip
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.config.interval)

    async def drain(self, timeout: float) -> None:
        self._stop.set()

    async def reload(self, config: Config) -> None:
        self.config = config.retention
