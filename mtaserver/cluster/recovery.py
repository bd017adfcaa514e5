"""When a node back from degraded mode may use the shared limits again.

While Redis was unreachable every node shaped alone at ``limit / nodes``, and the
connections it opened then are not leases in Redis. A node that finds Redis again
registers its own at once, but the others find Redis at their own pace (each tries every
``reconnect``, later under load): granting the whole shared limit before they have
registered theirs puts their connections on top of it (measured at the sink: 6 sessions for
a limit of 5, after a fixed grace had run out before the slowest node reconnected).

So the grace is not a timer but a condition. Each node, while up, writes a *mark* into
Redis ("every connection I hold is a lease") at each tick, only after registering what it
opened alone. Back from degraded at Redis time T, a node keeps its ``limit / nodes`` share
until every peer it knew before the outage (a mark within ``lease`` of its last read
before it) has marked after T, or, when it knew none (Redis was down at its start),
until ``nodes - 1`` other nodes have; at the latest after ``lease`` seconds, the time
after which the cluster already treats a silent node's connections as gone.
"""

from __future__ import annotations

from collections.abc import Mapping

from mtaserver.clock import Clock
from mtaserver.log import get_logger, kv

log = get_logger("cluster")


class Grace:
    """The peers' marks as last read, and whether a grace after an outage is running."""

    def __init__(self, node_id: str, nodes: int, lease: float, clock: Clock) -> None:
        self._node_id = node_id
        self._nodes = nodes
        self._lease = lease
        self._clock = clock
        self._peers: dict[str, int] = {}  # other nodes' last marks, Redis ms
        self._read_ms = 0  # Redis ms of the last answer (before an outage: its last)
        self._since = 0  # Redis ms this node came back; 0: no grace running
        self._expect: frozenset[str] | None = None  # None: peers unknown, count them
        self._deadline = 0.0  # monotonic
        self._started = 0.0
        self.timeouts = 0  # graces that ended at the deadline, a peer not heard from

    @property
    def active(self) -> bool:
        return self._since > 0

    def begin(self, now_ms: int, *, known: bool) -> None:
        """Redis answers again at ``now_ms``: wait for the peers known before the outage
        (``known``: this node had read the marks at least once), else for ``nodes - 1``."""
        recent = self._read_ms - int(self._lease * 1000)  # alive when Redis went away
        peers = frozenset(p for p, ms in self._peers.items() if ms >= recent)
        self._expect = peers if known else None
        self._since = max(1, now_ms)
        self._started = self._clock.monotonic()
        self._deadline = self._started + self._lease
        self._check()

    def observe(self, now_ms: int, marks: Mapping[str, int]) -> None:
        """A sync's answer: remember the peers' marks; end the grace once they suffice."""
        self._read_ms = max(self._read_ms, now_ms)
        for node, ms in marks.items():
            if node != self._node_id:
                self._peers[node] = ms
        self._check()

    def peers(self) -> list[str]:
        return sorted(self._peers)

    def waiting_for(self) -> list[str]:
        """The known peers that have not marked since this node came back (for the log)."""
        if self._expect is None:
            return []
        return sorted(p for p in self._expect if self._peers.get(p, 0) < self._since)

    def _check(self) -> None:
        if not self._since:
            return
        fresh = {p for p, ms in self._peers.items() if ms >= self._since}
        expect = self._expect
        done = len(fresh) >= self._nodes - 1 if expect is None else expect <= fresh
        if not done and self._clock.monotonic() < self._deadline:
            return
        if not done:
            self.timeouts += 1
        log.info(kv(event="cluster_grace_over", node=self._node_id,
                    by="peers" if done else "timeout", missing=",".join(self.waiting_for()),
                    waited=f"{self._clock.monotonic() - self._started:.2f}s"))  # fmt: skip
        self._since = 0
        self._expect = None

    def tick(self) -> None:
        """Without an answer from Redis the deadline still ends a grace."""
        self._check()
