"""``[admin]``: the operator HTTP API and metrics (loopback by default)."""

from __future__ import annotations

from dataclasses import dataclass

from mtaserver.config.reader import Reader


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: tuple[str, int] | None


def parse(r: Reader) -> AdminConfig:
    cfg = AdminConfig(listen=r.listen("listen", None))
    r.finish()
    return cfg
