"""``[submission]``: the listeners applications hand mail to."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mtaserver.config.reader import Reader

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class SubmissionConfig:
    listen: tuple[str, int] | None  # STARTTLS required before MAIL or AUTH (587)
    listen_tls: tuple[str, int] | None  # implicit TLS (465)
    listen_plain: tuple[str, int] | None  # plaintext, trusted networks only (benchmarks, apps)
    trusted_networks: tuple[Network, ...]
    require_tls: bool  # on `listen`: refuse MAIL/AUTH before STARTTLS
    bare_newline: str  # "normalize" | "reject"
    max_message_size: int
    max_recipients: int
    max_connections_per_ip: int
    idle_timeout: float
    max_session_time: float
    max_header_size: int
    user_rate: float | None  # messages per second per user


def parse(r: Reader) -> SubmissionConfig:
    cfg = SubmissionConfig(
        listen=r.listen("listen", None),
        listen_tls=r.listen("listen_tls", None),
        listen_plain=r.listen("listen_plain", None),
        trusted_networks=r.networks("trusted_networks", ()),
        require_tls=r.boolean("require_tls", True),
        bare_newline=r.choice("bare_newline", ("normalize", "reject"), "normalize"),
        max_message_size=r.size("max_message_size", 25 * 1024 * 1024),
        max_recipients=r.integer("max_recipients", 1000, min=1),
        max_connections_per_ip=r.integer("max_connections_per_ip", 50, min=1),
        idle_timeout=r.duration("idle_timeout", 300.0),
        max_session_time=r.duration("max_session_time", 3600.0),
        max_header_size=r.size("max_header_size", 256 * 1024),
        user_rate=r.rate("user_rate", None),
    )
    r.finish()
    return cfg
