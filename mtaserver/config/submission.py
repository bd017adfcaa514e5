"""``[submission]``: the listeners applications hand mail to, their limits and AUTH policy."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mtaserver.config.reader import Reader

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class AuthThrottleConfig:
    """AUTH failure throttling, per client IP and per user name (see mtaserver.auth)."""

    delay_after: int = 3  # failures before answers are delayed
    delay: float = 1.0  # first delay, doubling per further failure
    max_delay: float = 8.0
    lockout_after: int = 10  # failures → 421 4.7.0 and close, until the window passes
    window: float = 900.0


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
    user_burst: int = 10  # messages a user may send at once before user_rate applies
    max_mime_depth: int = 50
    auth: AuthThrottleConfig = AuthThrottleConfig()
    # RFC 4865 FUTURERELEASE: the longest HOLDFOR/HOLDUNTIL a client may ask for; 0 = off
    max_future_release: float = 72 * 3600.0


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
        user_burst=r.integer("user_burst", 10, min=1),
        max_mime_depth=r.integer("max_mime_depth", 50, min=1),
        auth=_auth(r.table("auth")),
        max_future_release=r.duration("max_future_release", 72 * 3600.0),
    )
    r.finish()
    if not 0 <= cfg.max_future_release <= 999_999_999:
        raise r.error(
            "max_future_release",
            "must be between 0 (FUTURERELEASE off) and 999999999s (RFC 4865 allows 9 digits), "
            f"got {cfg.max_future_release:g}s",
        )
    return cfg


def _auth(r: Reader) -> AuthThrottleConfig:
    cfg = AuthThrottleConfig(
        delay_after=r.integer("delay_after", 3, min=0),
        delay=r.duration("delay", 1.0),
        max_delay=r.duration("max_delay", 8.0),
        lockout_after=r.integer("lockout_after", 10, min=1),
        window=r.duration("window", 900.0),
    )
    r.finish()
    return cfg
