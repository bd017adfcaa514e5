"""``[tracking]``: the public HTTP endpoint for opens, clicks and unsubscribes.

::

    [tracking]
    listen = "127.0.0.1:8080"           # behind a TLS-terminating proxy in production
    base_url = "https://t.example.com"  # what links and the pixel point at
    secret_file = "/var/lib/mtaserver/tracking.key"  # one secret per line; first signs
    ip_privacy = "truncate"             # truncate | hash | full | none
    unsubscribe_mailto = "unsubscribe@example.com"   # optional mailto: List-Unsubscribe URI
    scanner_window = "10s"              # a click this soon after delivery is a scanner
    burst_window = "2s"                 # every link clicked within this is a scanner burst
    burst_links = 3                     # ... or this many different links
    bot_rules_file = "bots.toml"        # replaces the packaged proxy/scanner rules
    trusted_proxies = ["127.0.0.1/32"]  # X-Forwarded-For is believed from these only
    access_log = false                  # one line per request, tokens shortened
    opens = false                       # defaults for every user ...
    clicks = false
    unsubscribe = false

    [tracking.users.newsletter]         # ... and per authenticated user
    opens = true
    clicks = true
    unsubscribe = true
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from mtaserver.config.reader import Reader

IP_PRIVACY = ("truncate", "hash", "full", "none")


@dataclass(frozen=True, slots=True)
class TrackDefaults:
    """Which tracking a message gets when it carries no ``X-Mtaserver-Track`` header."""

    opens: bool = False
    clicks: bool = False
    unsubscribe: bool = False


@dataclass(frozen=True, slots=True)
class TrackingConfig:
    listen: tuple[str, int] | None
    base_url: str | None  # e.g. "https://t.example.com"
    secret_file: Path | None
    ip_privacy: str = "truncate"
    unsubscribe_mailto: str | None = None
    scanner_window: float = 10.0
    burst_window: float = 2.0
    burst_links: int = 3
    bot_rules_file: Path | None = None
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    access_log: bool = False
    defaults: TrackDefaults = TrackDefaults()
    users: tuple[tuple[str, TrackDefaults], ...] = field(default=())

    def defaults_for(self, user: str | None) -> TrackDefaults:
        """The per-user setting when there is one, else the global default."""
        for name, opts in self.users:
            if name == user:
                return opts
        return self.defaults


def _switches(r: Reader, base: TrackDefaults) -> TrackDefaults:
    return TrackDefaults(
        opens=r.boolean("opens", base.opens),
        clicks=r.boolean("clicks", base.clicks),
        unsubscribe=r.boolean("unsubscribe", base.unsubscribe),
    )


def parse(r: Reader, default_secret: Path) -> TrackingConfig:
    base_url = r.string("base_url", None)
    if base_url is not None and (
        not base_url.startswith(("http://", "https://"))
        or any(c.isspace() or ord(c) < 0x21 or ord(c) > 0x7E or c in "<>\"'" for c in base_url)
    ):
        raise r.error("base_url", f"expected an http(s) URL, got {base_url!r}")
    mailto = r.string("unsubscribe_mailto", None)
    if mailto is not None and (
        mailto.count("@") != 1 or any(c.isspace() or c in "<>?,;\"'" for c in mailto)
    ):
        raise r.error("unsubscribe_mailto", f"expected an email address, got {mailto!r}")
    defaults = _switches(r, TrackDefaults())
    users_table = r.table("users")
    users = []
    for name in users_table.names():
        ur = users_table.table(name)
        users.append((name, _switches(ur, defaults)))
        ur.finish()
    users_table.finish()
    cfg = TrackingConfig(
        listen=r.listen("listen", None),
        base_url=base_url.rstrip("/") if base_url else None,
        secret_file=r.path("secret_file", None) or default_secret,
        ip_privacy=r.choice("ip_privacy", IP_PRIVACY, "truncate"),
        unsubscribe_mailto=mailto,
        scanner_window=r.duration("scanner_window", 10.0),
        burst_window=r.duration("burst_window", 2.0),
        burst_links=r.integer("burst_links", 3, min=2),
        bot_rules_file=r.path("bot_rules_file", None, must_exist=True),
        trusted_proxies=r.networks("trusted_proxies", ()),
        access_log=r.boolean("access_log", False),
        defaults=defaults,
        users=tuple(users),
    )
    if cfg.listen is not None and cfg.base_url is None:
        raise r.error("base_url", "required when [tracking] listen is set")
    r.finish()
    return cfg
