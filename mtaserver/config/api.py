"""``[api]``: the HTTP send API (SendGrid v3 ``POST /v3/mail/send`` compatible).

Off unless ``listen`` is set. API keys cross the wire on every request, so as for
``[admin]`` a listener on anything but a loopback address must serve HTTPS (``tls = true``,
with the ``[tls]`` certificate). The limits default to the ones SendGrid documents, so an
application that works against SendGrid works here unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtaserver.config.admin import is_loopback
from mtaserver.config.reader import Reader

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ApiConfig:
    listen: tuple[str, int] | None = None
    tls: bool = False  # HTTPS with the [tls] certificate
    max_personalizations: int = 1000
    max_recipients: int = 1000  # to + cc + bcc over one request
    max_body: int = 30 * MiB  # request body and its decoded content
    max_send_ahead: float = 72 * 3600.0  # send_at at most this far in the future
    idempotency_window: float = 24 * 3600.0  # an Idempotency-Key is remembered this long
    max_concurrent_renders: int = 2  # requests composed at once (CPU work, in threads)


def parse(r: Reader) -> ApiConfig:
    cfg = ApiConfig(
        listen=r.listen("listen", None),
        tls=r.boolean("tls", False),
        max_personalizations=r.integer("max_personalizations", 1000, min=1, max=100_000),
        max_recipients=r.integer("max_recipients", 1000, min=1, max=1_000_000),
        max_body=r.size("max_body", 30 * MiB),
        max_send_ahead=r.duration("max_send_ahead", 72 * 3600.0),
        idempotency_window=r.duration("idempotency_window", 24 * 3600.0),
        max_concurrent_renders=r.integer("max_concurrent_renders", 2, min=1, max=64),
    )
    r.finish()
    if cfg.max_body < 1024:
        raise r.error("max_body", f"must be at least 1KiB, got {cfg.max_body} bytes")
    if cfg.max_send_ahead < 0:
        raise r.error("max_send_ahead", "must not be negative")
    if cfg.idempotency_window < 60:
        raise r.error(
            "idempotency_window",
            f"must be at least 1m so retries are recognised, got {cfg.idempotency_window}s",
        )
    if cfg.listen is not None and not cfg.tls and not is_loopback(cfg.listen[0]):
        raise r.error(
            "listen",
            f"{cfg.listen[0]} is not a loopback address: API keys would cross the network "
            "in plaintext; set tls = true (uses the [tls] certificate) or listen on 127.0.0.1",
        )
    return cfg
