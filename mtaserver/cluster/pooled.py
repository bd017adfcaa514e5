"""The delivery agent's side of the connection leases: its connections hold the slots.

The agent reports what happens to each delivery's connection (:class:`Claim`) and to the
idle ones in its pool; the slots these free go back to Redis from one task, so a
connection closing (often in a ``finally``, or on a cancelled delivery) never waits for a
round trip. Slots given back while Redis is down wait for it: a lease left in Redis would
count until its expiry once Redis is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

from mtaserver.cluster.client import RedisDown
from mtaserver.cluster.ledger import Slot

if TYPE_CHECKING:
    from mtaserver.cluster.shared import SharedShaping


class IdlePool(Protocol):
    """The delivery agent's idle connections, as the leases need them."""

    def evict(self, destination: str, n: int) -> int:
        """Close up to ``n`` idle connections to ``destination`` now; how many were."""
        ...

    async def drain(self) -> None:
        """Close every idle connection (the node stops)."""
        ...


class Claim:
    """One delivery's connection slot, as the delivery agent reports on it.

    The agent calls :meth:`take` (an idle pooled connection) or :meth:`connecting` (a new
    one), :meth:`disconnected` when that connection closes, and at the end :meth:`park`
    (the connection stays idle, with the slot; False: close it) or :meth:`end`."""

    __slots__ = ("_done", "_leases", "_on", "_own", "destination")

    def __init__(self, leases: ConnectionLeases, destination: str, own: bool) -> None:
        self._leases = leases
        self.destination = destination
        self._own = own  # its slot was taken for it, not the scheduler's permit
        self._on = False
        self._done = False

    def take(self) -> None:
        self._on = True
        self._leases.give(self.destination, self._leases.ledger.take(self.destination))

    def connecting(self) -> None:
        self._on = True
        self._leases.ledger.connecting(self.destination)

    def disconnected(self) -> None:
        if self._on:
            self._on = False
            self._leases.ledger.disconnected(self.destination)

    def park(self) -> bool:
        if self._done or not self._on or not self._leases.shared.may_park(self.destination):
            return False
        self._done, self._on = True, False
        self._leases.ledger.park(self.destination, self._own)
        return True

    def end(self) -> None:
        if self._done:
            return
        self.disconnected()
        self._done = True
        self._leases.give(self.destination, self._leases.ledger.end(self.destination, self._own))


class ConnectionLeases:
    """Implements the delivery agent's ``ConnectionLeases`` port for one SharedShaping."""

    def __init__(self, shared: SharedShaping) -> None:
        self.shared = shared
        self.ledger = shared.ledger
        self.pool: IdlePool | None = None
        self._releases: list[tuple[str, str]] = []  # given back, not yet out of Redis
        self._wake = asyncio.Event()

    def destination(self, domain: str) -> str:
        """The destination the scheduler filed ``domain`` under (its permit's)."""
        return self.shared.assigned(domain)

    def bind(self, pool: IdlePool) -> None:
        self.pool = pool

    async def begin(self, destination: str) -> Claim | None:
        """A delivery starts: it takes up its permit's slot. None: no slot for it (its
        destination changed since the permit, and a slot of its own was not free)."""
        if self.ledger.begin(destination):
            return Claim(self, destination, own=False)
        if await self.shared.claim_own(destination):
            return Claim(self, destination, own=True)
        return None

    def idle_closed(self, destination: str) -> None:
        self.give(destination, self.ledger.idle_closed(destination))

    # -- giving slots back --------------------------------------------------------------------
    def give(self, destination: str, slots: Sequence[Slot]) -> None:
        """Slots the ledger gave back: their leases leave Redis soon (:meth:`flush_loop`)."""
        ids = [x for x in slots if x is not None]
        if ids:
            self._releases.extend((destination, x) for x in ids)
            self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    async def flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        scripts = self.shared.scripts
        if not self._releases or not self.shared.redis_up or scripts is None:
            return
        todo, self._releases = self._releases, []
        by_dest: dict[str, list[str]] = {}
        for dest, lease_id in todo:
            by_dest.setdefault(dest, []).append(lease_id)
        dests = list(by_dest)
        for i, dest in enumerate(dests):
            try:
                self.shared.calls += 1
                await scripts.release(dest, by_dest[dest])
            except RedisDown as exc:  # this one and the rest wait for Redis
                self._releases.extend((d, x) for d in dests[i:] for x in by_dest[d])
                self.shared.down(exc)
                return
