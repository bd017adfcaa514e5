"""The event log: one row per state change worth keeping.

``emit`` waits until the event is committed (it rides in the next group commit with
whatever else is being written). ``emit_nowait`` buffers for callers that must not wait,
such as the tracking endpoint under a burst of opens: the buffer is flushed as one batch
by :meth:`EventLog.run`, so a thousand opens become one transaction, not a thousand fsyncs.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Sequence

from mtaserver.db import Database
from mtaserver.errors import StorageError
from mtaserver.log import get_logger, kv
from mtaserver.model import Event
from mtaserver.spool import insert_events

log = get_logger("events")


class EventLog:
    def __init__(self, db: Database, *, max_buffer: int = 100_000, flush_every: float = 0.2):
        self.db = db
        self._buffer: list[Event] = []
        self._max_buffer = max_buffer
        self._flush_every = flush_every
        self._wake = asyncio.Event()
        self.dropped = 0

    async def emit(self, *events: Event) -> None:
        await self.emit_many(events)

    async def emit_many(self, events: Sequence[Event]) -> None:
        batch = list(events)

        def op(conn: sqlite3.Connection) -> None:
            insert_events(conn, batch)

        await self.db.write(op)

    def emit_nowait(self, event: Event) -> None:
        """Buffer an event; written within ``flush_every`` seconds by :meth:`run`."""
        if len(self._buffer) >= self._max_buffer:
            self.dropped += 1
            log.warning(kv(event="event_buffer_full", type=event.type, queue_id=event.queue_id))
            return
        self._buffer.append(event)
        if len(self._buffer) >= 1000:
            self._wake.set()

    async def flush(self) -> None:
        if not self._buffer:
            return
        batch, self._buffer = self._buffer, []
        try:
            await self.emit_many(batch)
        except StorageError as exc:
            # Keep them for the next try rather than losing them.
            self._buffer[:0] = batch
            log.error(kv(event="event_flush_failed", count=len(batch), error=str(exc)))

    async def run(self) -> None:
        """Flush the buffer periodically until cancelled; flush once more on the way out."""
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._flush_every)
                self._wake.clear()
                await self.flush()
        finally:
            with contextlib.suppress(StorageError):
                await asyncio.shield(self.flush())
