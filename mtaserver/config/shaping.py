"""``[shaping.default]`` and ``[shaping."<domain>"]``: per-destination traffic limits."""

from __future__ import annotations

from dataclasses import dataclass, field

from mtaserver.config.reader import Reader


@dataclass(frozen=True, slots=True)
class DestinationShaping:
    max_connections: int
    max_messages_per_connection: int
    max_rate: float | None  # messages per second; None = unlimited
    tls: str | None = None  # per-destination override of [delivery] tls


@dataclass(frozen=True, slots=True)
class ShapingConfig:
    default: DestinationShaping
    domains: dict[str, DestinationShaping] = field(default_factory=dict)

    def for_domain(self, domain: str) -> DestinationShaping:
        return self.domains.get(domain.lower(), self.default)


_BUILTIN_DEFAULT = DestinationShaping(
    max_connections=10, max_messages_per_connection=100, max_rate=None
)


def _parse_one(r: Reader, base: DestinationShaping) -> DestinationShaping:
    cfg = DestinationShaping(
        max_connections=r.integer("max_connections", base.max_connections, min=1),
        max_messages_per_connection=r.integer(
            "max_messages_per_connection", base.max_messages_per_connection, min=1
        ),
        max_rate=r.rate("max_rate", base.max_rate),
        tls=r.choice("tls", ("opportunistic", "required", "none"), base.tls),
    )
    r.finish()
    return cfg


def parse(r: Reader) -> ShapingConfig:
    default = _parse_one(r.table("default"), _BUILTIN_DEFAULT)
    domains = {
        key.lower().rstrip("."): _parse_one(r.table(key), default)
        for key in r.names()
        if key != "default"
    }
    r.finish()
    return ShapingConfig(default=default, domains=domains)
