"""A clock the test moves by hand."""

from __future__ import annotations

import asyncio


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._mono = 1000.0

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._now += seconds
        self._mono += seconds

    async def sleep(self, seconds: float) -> None:
        """Time passes at once; other tasks get their turn."""
        self.advance(seconds)
        await asyncio.sleep(0)


class TimerClock(FakeClock):
    """A fake timer: ``sleep`` returns only once :meth:`advance` has moved time past it.

    For loops paced by the clock (a reaper, a poller) that a test steps by hand; with
    :class:`FakeClock` such a loop would race its own time forward.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        super().__init__(start)
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        due = [(t, f) for t, f in self._sleepers if t <= self.monotonic()]
        self._sleepers = [(t, f) for t, f in self._sleepers if t > self.monotonic()]
        for _, fut in due:
            if not fut.done():
                fut.set_result(None)

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (self.monotonic() + seconds, fut)
        self._sleepers.append(entry)
        try:
            await fut
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)
