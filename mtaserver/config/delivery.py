"""``[delivery]``: how queued mail leaves."""

from __future__ import annotations

from dataclasses import dataclass

from mtaserver.config.reader import Reader, parse_hostport

TLS_MODES = ("opportunistic", "required", "none")


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    nameservers: tuple[tuple[str, int], ...]  # empty: the system resolver
    port: int  # destination SMTP port (25; tests and benchmarks override)
    relay_host: str | None  # smarthost "host" or "host:port"
    tls: str
    max_connections: int  # global cap on outbound connections
    lease: float  # how long a claimed recipient stays leased


def parse(r: Reader) -> DeliveryConfig:
    servers = []
    for ns in r.str_list("nameservers", ()):
        try:
            servers.append(parse_hostport(ns, require_port=False, default_port=53))
        except ValueError:
            raise r.error("nameservers", f"expected 'ip:port' entries, got {ns!r}") from None
    relay = r.string("relay_host", None)
    if relay is not None:
        try:
            parse_hostport(relay, require_port=False, default_port=25)
        except ValueError:
            raise r.error("relay_host", f"expected 'host' or 'host:port', got {relay!r}") from None
    cfg = DeliveryConfig(
        nameservers=tuple(servers),
        port=r.integer("port", 25, min=1, max=65535),
        relay_host=relay or None,
        tls=r.choice("tls", TLS_MODES, "opportunistic"),
        max_connections=r.integer("max_connections", 200, min=1),
        lease=r.duration("lease", 600.0),
    )
    r.finish()
    return cfg
