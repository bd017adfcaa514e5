"""The events feed: event-log rows after a cursor, in id order.

The cursor is the last ``id`` the caller has seen; ids only grow (one writer, one
transaction at a time), so "everything after N" never skips a committed row and a consumer
that stores its cursor resumes exactly where it stopped.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mtaserver.storage.sqlite.db import Database


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: int
    at: float
    type: str
    queue_id: str | None
    recipient: str | None
    data: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "at": self.at,
            "type": self.type,
            "queue_id": self.queue_id,
            "recipient": self.recipient,
            "data": self.data,
        }


def _data(raw: str | None) -> dict[str, Any]:
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def page(
    db: Database,
    *,
    after: int = 0,
    limit: int = 100,
    types: Sequence[str] = (),
    queue_id: str | None = None,
) -> list[StoredEvent]:
    clauses = ["id > ?"]
    params: list[Any] = [after]
    if types:
        clauses.append(f"type IN ({','.join('?' * len(types))})")
        params.extend(types)
    if queue_id:
        clauses.append("queue_id = ?")
        params.append(queue_id)
    sql = (
        "SELECT id, at, type, queue_id, recipient, data FROM events "
        f"WHERE {' AND '.join(clauses)} ORDER BY id LIMIT ?"
    )

    def fn(conn: sqlite3.Connection) -> list[StoredEvent]:
        rows = conn.execute(sql, (*params, limit)).fetchall()
        return [StoredEvent(r[0], r[1], r[2], r[3], r[4], _data(r[5])) for r in rows]

    return await db.read(fn)
