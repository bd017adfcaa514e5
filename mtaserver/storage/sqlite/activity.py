"""A contact's timeline: the messages an owner sent to an address, and what happened to
each (queued, delivered, deferred, bounced, opened or clicked — by a person or a machine —,
unsubscribed, complained), oldest first, a page at a time.

Read-only over the queue's and the event log's tables (their owners write them), through
their indexes: the address's recipient rows (``recipients_address``), then each message's
events for that recipient (``events_queue_recipient``). A message is the owner's when the
queue says its user is, so the timeline reaches back as far as ``[retention]`` keeps
messages. Addresses match as stored (contacts are lower-case; mail sent from them is too).
Pages follow a keyset on (time, event id, queue id).
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any, Final

from mtaserver.contacts import iso
from mtaserver.storage.sqlite.db import Database

PAGE: Final = 1000
NAMES: Final = {"open": "opened", "click": "clicked", "unsubscribe": "unsubscribed",
                "complaint": "complained"}  # fmt: skip
# ?1 owner, ?2 address, then the cursor (at, id, queue id) and the limit.
_SQL = """
WITH mine AS (
    SELECT m.id, m.received_at, m.message_id, m.campaign, r.address
    FROM recipients r JOIN messages m ON m.id = r.queue_id
    WHERE r.address = ?2 AND m.user = ?1
)
SELECT * FROM (
    SELECT received_at AS at, 0 AS id, id AS queue_id, 'queued' AS type, message_id,
           campaign, NULL AS data
    FROM mine
    UNION ALL
    SELECT e.at, e.id, e.queue_id, e.type, mine.message_id, mine.campaign, e.data
    FROM mine JOIN events e ON e.queue_id = mine.id AND e.recipient = mine.address
    WHERE e.type <> 'accepted'
) WHERE (at, id, queue_id) > (?3, ?4, ?5)
ORDER BY at, id, queue_id LIMIT ?6
"""


@dataclass(frozen=True, slots=True)
class Activity:
    at: float
    id: int
    queue_id: str
    type: str
    message_id: str | None
    campaign: str | None
    data: str | None

    def cursor(self) -> str:
        return f"{self.at!r}:{self.id}:{self.queue_id}"

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"at": iso(self.at), "type": NAMES.get(self.type, self.type),
                               "queue_id": self.queue_id, "message_id": self.message_id or None,
                               "campaign": self.campaign}  # fmt: skip
        try:
            data = json.loads(self.data) if self.data else {}
        except ValueError:
            data = {}
        if not isinstance(data, dict):
            data = {}
        if self.type in ("open", "click"):
            out["machine"] = bool(data.get("machine"))
            if data.get("url"):
                out["url"] = data["url"]
        for key in ("reply", "status", "category", "reason"):
            if isinstance(data.get(key), str | int) and key not in out:
                out[key] = data[key]
        return out


def parse_cursor(raw: str) -> tuple[float, int, str]:
    """The ``next`` value of a page; ValueError when it is not one."""
    at, _, rest = raw.partition(":")
    eid, _, qid = rest.partition(":")
    return float(at), int(eid), qid


class ActivityStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def timeline(
        self, owner: str, address: str, *, after: tuple[float, int, str] = (-1.0, 0, ""),
        limit: int = 100,
    ) -> list[Activity]:  # fmt: skip
        addr = address.strip().lower()
        n = max(1, min(limit, PAGE))

        def fn(conn: sqlite3.Connection) -> list[Activity]:
            return [
                Activity(float(r[0]), int(r[1]), str(r[2]), str(r[3]), r[4], r[5], r[6])
                for r in conn.execute(_SQL, (owner, addr, *after, n))
            ]

        return await self.db.read(fn)
