"""The tracking lookup's backend-free step: the rows of either backend's lookup statement
as the recipients that hits name."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from mtaserver.model import Key, TrackedRecipient


def tracked(rows: Iterable[Sequence[Any]]) -> dict[Key, TrackedRecipient]:
    """``(queue_id, idx, address, sender, campaign, user, state, updated_at, first
    delivery)`` rows by key; a recipient whose row says delivered but that has no
    ``delivered`` event was delivered when its row last changed."""
    out: dict[Key, TrackedRecipient] = {}
    for qid, idx, address, sender, campaign, user, state, updated_at, delivered in rows:
        if delivered is None and state == "delivered":
            delivered = updated_at
        out[(qid, int(idx))] = TrackedRecipient(address, sender, campaign, user, state, delivered)
    return out
