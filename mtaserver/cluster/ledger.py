"""Which connection slots of a destination this node holds, and who holds each: the books
behind a lease that lives as long as its SMTP connection.

A *slot* is one connection lease (an id in Redis, or ``None`` when it was taken locally
while Redis was unreachable). The scheduler takes one per delivery (its permit); the
delivery agent then runs the delivery on a new connection or on an idle pooled one, and
at the end the delivery's slot either goes with its connection into the pool (the
connection stays counted while idle) or is given back. So the slots of a destination
cover, at every moment, every connection this node has open to it plus every permit that
may still open one:

* ``unbound`` permits granted and not yet taken up by a delivery, ``claims`` deliveries
  in progress (``free`` of them between connections), ``idle`` pooled connections;
* a permit granted while an idle connection waits is *reserved* on it: no new slot (at the
  limit, the pool would otherwise never be reused) — that connection's slot moves to the
  permit, and the pool keeps ``reserved <= unbound + free`` (each reserved connection has
  a delivery that will take it or its slot);
* slots held = ``unbound + claims + idle - reserved``, less ``debt`` for leases Redis no
  longer counted (not renewed in time, then taken by another node), whose connections
  must close.

Pure bookkeeping, no I/O: every method says which lease ids to give back; the caller
(:mod:`mtaserver.cluster.shared`) talks to Redis. Deliveries and permits of one destination
are interchangeable, so counts suffice.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

Slot = str | None  # a lease id in Redis, or None: taken locally (degraded)


@dataclass(slots=True)
class Books:
    """One destination's counts (mutable; only the ledger changes them)."""

    slots: list[Slot] = field(default_factory=list)
    unbound: int = 0
    claims: int = 0
    free: int = 0  # claims between connections
    idle: int = 0
    reserved: int = 0  # idle connections whose slot backs a permit
    owed: int = 0  # claims ended whose scheduler release is still to come
    debt: int = 0  # slots lost in Redis, still open here

    @property
    def count(self) -> int:
        """Connection slots this node holds (open, idle or about to open)."""
        return len(self.slots) + self.debt

    @property
    def reusable(self) -> bool:
        """An idle connection can carry a new permit (see :meth:`Ledger.reserve`)."""
        return self.idle > self.reserved and not self.debt


class Ledger:
    def __init__(self) -> None:
        self._books: defaultdict[str, Books] = defaultdict(Books)

    def books(self, dest: str) -> Books:
        return self._books[dest]

    def items(self) -> Iterator[tuple[str, Books]]:
        return iter(list(self._books.items()))

    def clear(self) -> None:
        self._books.clear()

    # -- the scheduler's permits ------------------------------------------------------------
    def reserve(self, dest: str) -> bool:
        """Reserve an idle pooled connection for a new permit (no new slot), if one waits."""
        b = self._books[dest]
        if not b.reusable:
            return False
        b.reserved += 1
        b.unbound += 1
        return True

    def unreserve(self, dest: str) -> None:
        """The reserved permit was not granted after all (no token, suspended)."""
        b = self._books[dest]
        b.reserved -= 1
        b.unbound -= 1

    def granted(self, dest: str, slot: Slot) -> None:
        """A permit with a new slot."""
        b = self._books[dest]
        b.slots.append(slot)
        b.unbound += 1

    def release(self, dest: str) -> list[Slot]:
        """The scheduler gives a permit back: a no-op for a delivery that already settled
        its slot (kept by its pooled connection, or given back at its end)."""
        b = self._books[dest]
        if b.owed:
            b.owed -= 1
            return []
        if not b.unbound:
            return []
        b.unbound -= 1
        return self._shrink(b)

    # -- the delivery agent -----------------------------------------------------------------
    def begin(self, dest: str) -> bool:
        """A delivery takes up a permit of ``dest``; False: none waits (the agent then needs
        a slot of its own, see :meth:`claim_with`)."""
        b = self._books[dest]
        if not b.unbound:
            return False
        b.unbound -= 1
        b.claims += 1
        b.free += 1
        return True

    def claim_with(self, dest: str, slot: Slot) -> None:
        """A delivery with a slot of its own (its destination's permit was not found)."""
        b = self._books[dest]
        b.slots.append(slot)
        b.claims += 1
        b.free += 1

    def take(self, dest: str) -> list[Slot]:
        """A delivery takes an idle pooled connection: one slot for one connection."""
        b = self._books[dest]
        b.idle -= 1
        b.free -= 1
        if b.reserved:
            b.reserved -= 1
            return []
        return self._drop(b)

    def connecting(self, dest: str) -> None:
        """A delivery opens a new connection (the pool had none for it)."""
        self._books[dest].free -= 1

    def disconnected(self, dest: str) -> None:
        """A delivery's connection closed; the delivery goes on (another MX, or its end)."""
        self._books[dest].free += 1

    def park(self, dest: str, own: bool = False) -> None:
        """A delivery ends and its connection goes idle into the pool, with its slot.
        ``own``: the delivery began with :meth:`claim_with` (no scheduler release follows)."""
        b = self._books[dest]
        b.claims -= 1
        b.idle += 1
        b.owed += 0 if own else 1

    def end(self, dest: str, own: bool = False) -> list[Slot]:
        """A delivery ends without a connection: its slot goes back."""
        b = self._books[dest]
        b.claims -= 1
        b.free -= 1
        b.owed += 0 if own else 1
        return self._shrink(b)

    def idle_closed(self, dest: str) -> list[Slot]:
        """An idle pooled connection closed (idle timeout, broken, evicted, drained)."""
        b = self._books[dest]
        b.idle -= 1
        if b.reserved > b.idle:  # it was the one a permit counted on: the permit keeps the slot
            b.reserved -= 1
            return []
        return self._drop(b)

    # -- what Redis or the local share decide -----------------------------------------------
    def lost(self, dest: str, ids: list[str]) -> int:
        """Leases Redis no longer holds for us: off the books, owed as debt; returns how
        many idle connections to close now (the rest close as their deliveries end)."""
        b = self._books[dest]
        for lease_id in ids:
            if lease_id in b.slots:
                b.slots.remove(lease_id)
                b.debt += 1
        return min(b.debt, b.idle - b.reserved)

    def excess(self, dest: str, share: int) -> int:
        """Idle connections to close so that this node holds at most ``share`` slots."""
        b = self._books[dest]
        return max(0, min(b.count - share, b.idle - b.reserved))

    # -- internals --------------------------------------------------------------------------
    def _shrink(self, b: Books) -> list[Slot]:
        """One opener fewer: un-reserve a connection no delivery will take, else give a
        slot back."""
        if b.reserved > b.unbound + b.free:
            b.reserved -= 1
            return []
        return self._drop(b)

    @staticmethod
    def _drop(b: Books) -> list[Slot]:
        if b.debt:
            b.debt -= 1
            return []
        return [b.slots.pop()] if b.slots else []
