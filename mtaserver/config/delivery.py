"""``[delivery]``: how queued mail leaves.

Keys: nameservers, port, relay_host, tls, ca_file, hostname, connect_timeout,
command_timeout, data_timeout, idle_timeout, dns_timeout, ipv6, max_mx_addresses,
max_connections, lease. Per-destination TLS overrides are ``[shaping."<name>"] tls``
(the destination's limits carry them); ``route_policy`` merges both into the
``RoutePolicy`` the delivery agent gets.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from mtaserver.config.reader import Reader, parse_hostport
from mtaserver.model import RoutePolicy

TLS_MODES = ("opportunistic", "required", "none")


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    nameservers: tuple[tuple[str, int], ...]  # empty: the system resolver
    port: int  # destination SMTP port (25; tests and benchmarks override)
    relay_host: str | None  # smarthost "host" or "host:port"
    tls: str
    max_connections: int  # global cap on outbound connections
    lease: float  # how long a claimed recipient stays leased
    hostname: str | None = None  # EHLO name; None = [server] hostname
    ca_file: Path | None = None  # trust store for tls = "required"; None = system store
    connect_timeout: float = 30.0  # TCP connect + greeting
    command_timeout: float = 60.0  # EHLO, STARTTLS, MAIL, RCPT, RSET, QUIT
    data_timeout: float = 300.0  # DATA and the final "." reply
    idle_timeout: float = 10.0  # keep an idle connection this long for reuse
    dns_timeout: float = 10.0  # one whole lookup, all retries included
    ipv6: bool = True  # also look up AAAA for MX hosts
    max_mx_addresses: int = 10  # addresses tried per attempt, across all MX hosts

    def route_policy(
        self, *, tls: str | None = None, max_messages_per_connection: int = 100
    ) -> RoutePolicy:
        """The policy for one destination: its TLS override and connection limit."""
        return RoutePolicy(
            tls=tls or self.tls,
            port=self.port,
            relay_host=self.relay_host,
            max_messages_per_connection=max_messages_per_connection,
            connect_timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
            data_timeout=self.data_timeout,
            idle_timeout=self.idle_timeout,
        )


def parse(r: Reader) -> DeliveryConfig:
    servers = []
    for ns in r.str_list("nameservers", ()):
        try:
            host, port = parse_hostport(ns, require_port=False, default_port=53)
            ipaddress.ip_address(host)
            if not 0 < port < 65536:
                raise ValueError("port")
        except ValueError:
            raise r.error(
                "nameservers", f"expected 'ip:port' entries (an IP address), got {ns!r}"
            ) from None
        servers.append((host, port))
    relay = r.string("relay_host", None)
    if relay is not None:
        try:
            parse_hostport(relay, require_port=False, default_port=25)
        except ValueError:
            raise r.error("relay_host", f"expected 'host' or 'host:port', got {relay!r}") from None
    hostname = r.string("hostname", None)
    if hostname is not None and (not hostname or any(c.isspace() for c in hostname)):
        raise r.error("hostname", f"expected a host name, got {hostname!r}")
    if hostname is not None and not hostname.isascii():
        raise r.error("hostname", f"expected an ASCII host name, got {hostname!r}")
    cfg = DeliveryConfig(
        nameservers=tuple(servers),
        port=r.integer("port", 25, min=1, max=65535),
        relay_host=relay or None,
        tls=r.choice("tls", TLS_MODES, "opportunistic"),
        max_connections=r.integer("max_connections", 200, min=1),
        lease=r.duration("lease", 600.0),
        hostname=hostname,
        ca_file=r.path("ca_file", None, must_exist=True, readable=True),
        connect_timeout=_positive(r, "connect_timeout", 30.0),
        command_timeout=_positive(r, "command_timeout", 60.0),
        data_timeout=_positive(r, "data_timeout", 300.0),
        idle_timeout=r.duration("idle_timeout", 10.0),
        dns_timeout=_positive(r, "dns_timeout", 10.0),
        ipv6=r.boolean("ipv6", True),
        max_mx_addresses=r.integer("max_mx_addresses", 10, min=1, max=100),
    )
    r.finish()
    return cfg


def _positive(r: Reader, key: str, default: float) -> float:
    value = float(r.duration(key, default))
    if value <= 0:
        raise r.error(key, "expected a duration above zero")
    return value
