"""The event log owners' backend-free steps: an event's stored ``data`` read back, and how
a privacy erase rewrites one event — the same on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from mtaserver.model import Redaction


def event_data(raw: str | None) -> dict[str, Any]:
    """An event's ``data`` column as a dict (empty when absent or not a JSON object)."""
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def erased_event(
    recipient: str | None, data: str | None, red: Redaction, personal: Sequence[str]
) -> tuple[str | None, str]:
    """The ``(recipient, data)`` an erase writes over one event: the erased person's own
    event loses its ``personal`` data keys (user agent, IP) and names the token instead of
    the address; the address goes from every string of any event's data."""
    own = (recipient or "").lower() == red.address
    try:
        payload = json.loads(data) if data else {}
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        if own:
            for key in personal:
                payload.pop(key, None)
        new_data = json.dumps(red.scrub(payload))
    else:
        new_data = red.sub(data) or "{}"
    return (red.token if own else red.sub(recipient)), new_data
