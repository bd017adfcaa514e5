"""``[admin]``: the operator HTTP API and Prometheus metrics (loopback by default).

The API is off unless ``listen`` is set. Bearer tokens cross the wire on every request, so a
listener on anything but a loopback address must serve HTTPS (``tls = true``, with the
``[tls]`` certificate); plaintext is refused at config time, not discovered by a sniffer.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mtaserver.config.reader import Reader

METRICS_AUTH = ("token", "none")


@dataclass(frozen=True, slots=True)
class AdminConfig:
    listen: tuple[str, int] | None
    tls: bool = False  # HTTPS with the [tls] certificate
    metrics_auth: str = "token"  # "token": /metrics needs a bearer token; "none": open
    top_destinations: int = 20  # destinations labelled in queue-depth metrics; the rest summed


def is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse(r: Reader) -> AdminConfig:
    cfg = AdminConfig(
        listen=r.listen("listen", None),
        tls=r.boolean("tls", False),
        metrics_auth=r.choice("metrics_auth", METRICS_AUTH, "token"),
        top_destinations=r.integer("top_destinations", 20, min=1, max=1000),
    )
    r.finish()
    if cfg.listen is not None and not cfg.tls and not is_loopback(cfg.listen[0]):
        raise r.error(
            "listen",
            f"{cfg.listen[0]} is not a loopback address: bearer tokens would cross the "
            "network in plaintext; set tls = true (uses the [tls] certificate) or listen "
            "on 127.0.0.1",
        )
    return cfg
