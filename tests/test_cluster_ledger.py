"""The connection-slot books against a model of what the scheduler and the agent do.

Random but legal sequences of the events the ledger hears (permits granted, reserved on an
idle connection, refused locally; deliveries beginning, taking an idle connection or
opening one, losing it, ending with it parked or not; idle connections closing; leases lost
in Redis) — after every one, the slots held cover every connection open plus every one the
pending deliveries may still open, and the limit is never exceeded that way. At the end
nothing is left on the books.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from mtaserver.clock import SystemClock
from mtaserver.cluster.ledger import Ledger
from mtaserver.config.shaping import DestinationConfig, ShapingConfig
from mtaserver.shaper import Shaper

D = "d.test"
LIMIT = 4


@dataclass
class Model:
    ledger: Ledger = field(default_factory=Ledger)
    waiting: int = 0  # permits granted, delivery not begun
    free: list[bool] = field(default_factory=list)  # deliveries: own slot? (no connection)
    busy: list[bool] = field(default_factory=list)  # deliveries on a connection
    idle: int = 0  # pooled connections
    owed: int = 0  # scheduler releases still to come for ended deliveries
    seq: int = 0

    @property
    def open(self) -> int:
        return len(self.busy) + self.idle

    def new_id(self) -> str:
        self.seq += 1
        return f"n:{self.seq}"

    def check(self) -> None:
        b = self.ledger.books(D)
        assert min(b.unbound, b.claims, b.free, b.idle, b.reserved, b.owed, b.debt) >= 0, b
        assert b.idle == self.idle and b.claims == len(self.free) + len(self.busy), b
        may_open = max(0, self.waiting + len(self.free) - self.idle)
        assert b.count >= self.open + may_open, (b, self)
        assert self.open + may_open <= LIMIT, (b, self)

    def step(self, rnd: random.Random) -> None:
        b = self.ledger.books(D)
        led = self.ledger
        choice = rnd.randrange(11)
        if choice == 0:  # the scheduler's permit, as SharedShaping grants it
            if b.idle > b.reserved and not b.debt:
                assert led.reserve(D)
                self.waiting += 1
            elif b.count < LIMIT:
                led.granted(D, self.new_id())
                self.waiting += 1
        elif choice == 1 and self.waiting:  # the local shaper refused right after
            self.waiting -= 1
            led.release(D)
        elif choice == 2 and self.waiting:
            self.waiting -= 1
            assert led.begin(D)
            self.free.append(False)
        elif choice == 3 and self.free:  # an idle connection, else a new one
            own = self.free.pop(rnd.randrange(len(self.free)))
            if self.idle:
                self.idle -= 1
                led.take(D)
            else:
                led.connecting(D)
            self.busy.append(own)
        elif choice == 4 and self.busy:  # the connection broke, the delivery goes on
            self.free.append(self.busy.pop(rnd.randrange(len(self.busy))))
            led.disconnected(D)
        elif choice == 5 and self.busy:  # ends, parked
            own = self.busy.pop(rnd.randrange(len(self.busy)))
            led.park(D, own)
            self.idle += 1
            self.owed += 0 if own else 1
        elif choice == 6 and self.free:  # ends without a connection
            own = self.free.pop(rnd.randrange(len(self.free)))
            led.end(D, own)
            self.owed += 0 if own else 1
        elif choice == 7 and self.owed:
            self.owed -= 1
            led.release(D)
        elif choice == 8 and self.idle:
            self.idle -= 1
            led.idle_closed(D)
        elif choice == 9 and b.slots:  # Redis lost a lease; the idle ones named close
            n = led.lost(D, [rnd.choice([x for x in b.slots if x is not None])])
            for _ in range(n):
                self.idle -= 1
                led.idle_closed(D)
        elif choice == 10 and not self.waiting and b.count < LIMIT:  # no permit of its own
            led.claim_with(D, self.new_id())
            self.free.append(True)

    def finish(self) -> None:
        led = self.ledger
        while self.busy:
            own = self.busy.pop()
            led.disconnected(D)
            led.end(D, own)
            self.owed += 0 if own else 1
        while self.free:
            own = self.free.pop()
            led.end(D, own)
            self.owed += 0 if own else 1
        for _ in range(self.waiting):
            led.release(D)
        for _ in range(self.owed):
            led.release(D)
        for _ in range(self.idle):
            led.idle_closed(D)


@pytest.mark.parametrize("seed", range(40))
def test_the_slots_cover_every_connection_and_what_may_open(seed: int) -> None:
    rnd = random.Random(seed)
    m = Model()
    for _ in range(400):
        m.step(rnd)
        m.check()
    m.finish()
    b = m.ledger.books(D)
    assert (b.slots, b.unbound, b.claims, b.free, b.idle, b.reserved, b.debt) == (
        [], 0, 0, 0, 0, 0, 0,
    ), b  # fmt: skip


def test_a_permit_at_the_limit_is_carried_by_an_idle_connection() -> None:
    """The pool is reused at the limit: the idle connection's slot carries the permit."""
    led = Ledger()
    for i in range(LIMIT):
        led.granted(D, f"n:{i}")
        assert led.begin(D)
        led.connecting(D)
        led.park(D)
        assert led.release(D) == []
    b = led.books(D)
    assert b.count == LIMIT and b.idle == LIMIT
    assert led.reserve(D)  # no new slot
    assert b.count == LIMIT
    assert led.begin(D)
    assert led.take(D) == []  # the reserved one: nothing to give back
    led.park(D)
    assert led.release(D) == [] and b.count == LIMIT
    assert led.idle_closed(D) == [f"n:{LIMIT - 1}"]


def test_the_agent_sees_the_destination_the_scheduler_filed_a_domain_under() -> None:
    """The agent has no MX hosts in relay mode: the shaper remembers its MX-based answer,
    as the scheduler caches it across a reload, and forgets it once the domain is static."""
    google = DestinationConfig("gmail.com", mx_suffixes=("google.com",))
    shaper = Shaper(ShapingConfig(destinations=(google,), builtin=False), SystemClock())
    assert shaper.destination("acme.test", ["aspmx.l.google.com"]) == "gmail.com"
    assert shaper.assigned("acme.test") == "gmail.com"
    assert shaper.assigned("Other.Test") == "other.test"
    assert shaper.destination("acme.test", []) == "acme.test"  # the MX lookup failed
    assert shaper.assigned("acme.test") == "acme.test"
    shaper.destination("acme.test", ["aspmx.l.google.com"])
    own = DestinationConfig("acme", domains=("acme.test",))
    shaper.reconfigure(ShapingConfig(destinations=(google, own), builtin=False),
                       max_connections=200)  # fmt: skip
    assert shaper.assigned("acme.test") == "gmail.com"  # the scheduler's cached answer
    assert shaper.destination("acme.test") == "acme"
    assert shaper.assigned("acme.test") == "acme"
