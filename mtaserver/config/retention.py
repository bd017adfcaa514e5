"""``[retention]``: how long bodies, delivery records and events are kept.

``bodies`` counts from the moment the last recipient of a message became final (default 0:
dropped in the same transaction). ``records`` (final recipients and their messages) and
``events`` count from when they were written; ``"forever"`` keeps them.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtaserver.config.reader import Reader

FOREVER = float("inf")
_SIXTY_DAYS = 60 * 86400.0


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    bodies: float = 0.0
    records: float = _SIXTY_DAYS
    events: float = _SIXTY_DAYS
    batch_size: int = 500  # rows per transaction: a delete never holds the writer for long
    interval: float = 60.0  # seconds between sweeps


def _maybe_forever(r: Reader, key: str, default: float) -> float:
    if r.has(key) and r.string(key) == "forever":
        return FOREVER
    value: float = r.duration(key, default)
    return value


def parse(r: Reader) -> RetentionConfig:
    cfg = RetentionConfig(
        bodies=r.duration("bodies", 0.0),
        records=_maybe_forever(r, "records", _SIXTY_DAYS),
        events=_maybe_forever(r, "events", _SIXTY_DAYS),
        batch_size=r.integer("batch_size", 500, min=1, max=100_000),
        interval=r.duration("interval", 60.0),
    )
    if cfg.interval <= 0:
        raise r.error("interval", "expected a duration > 0")
    r.finish()
    return cfg
