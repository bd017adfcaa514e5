"""``[[webhooks]]``: endpoints that receive events as signed JSON POSTs.

Each entry: ``url`` (http or https), ``events`` (types wanted; empty or ``["*"]`` = all),
``secret`` or ``secret_file`` (HMAC-SHA256 key), ``timeout`` per POST, ``max_retry_time``
(give up on an event after that long), ``retry_interval`` (first back-off, doubling up to
``max_retry_interval``), ``concurrency`` (POSTs in flight), and an optional ``name`` (default:
the url) that keys the durable outbox — renaming an entry drops its pending events.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from mtaserver.config.reader import Reader

EVENT_TYPES = (
    "accepted", "delivered", "deferred", "bounced", "complaint", "unsubscribe", "open",
    "click", "suppressed", "dsn_sent", "deleted", "expired",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class WebhookConfig:
    name: str
    url: str
    events: tuple[str, ...]  # () = every type
    secret: bytes
    timeout: float = 10.0
    max_retry_time: float = 86400.0
    retry_interval: float = 10.0
    max_retry_interval: float = 3600.0
    concurrency: int = 4

    def wants(self, event_type: str) -> bool:
        return not self.events or event_type in self.events


def parse(readers: list[Reader]) -> tuple[WebhookConfig, ...]:
    out: list[WebhookConfig] = []
    names: set[str] = set()
    for r in readers:
        url = r.string("url")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise r.error("url", f"expected an http:// or https:// URL, got {url!r}")
        events = r.str_list("events", ())
        if "*" in events:
            events = ()
        for e in events:
            if not e or not all(c.isalnum() or c in "_-." for c in e):
                raise r.error("events", f"expected event type names, got {e!r}")
        secret: str | None = r.string("secret", None)
        secret_file = r.path("secret_file", None, must_exist=True, readable=True)
        if (secret is None) == (secret_file is None):
            raise r.error("secret", "set exactly one of secret or secret_file")
        if secret_file is not None:
            try:
                secret = secret_file.read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise r.error("secret_file", f"cannot read {secret_file}: {exc}") from None
        if not secret or len(secret) < 16:
            raise r.error("secret", "expected a secret of at least 16 characters")
        name = r.string("name", url)
        if name in names:
            raise r.error("name", f"duplicate webhook name {name!r}")
        names.add(name)
        cfg = WebhookConfig(
            name=name,
            url=url,
            events=tuple(dict.fromkeys(events)),
            secret=secret.encode("utf-8"),
            timeout=r.duration("timeout", 10.0),
            max_retry_time=r.duration("max_retry_time", 86400.0),
            retry_interval=r.duration("retry_interval", 10.0),
            max_retry_interval=r.duration("max_retry_interval", 3600.0),
            concurrency=r.integer("concurrency", 4, min=1, max=256),
        )
        if cfg.timeout <= 0:
            raise r.error("timeout", "expected a duration > 0")
        if cfg.retry_interval <= 0:
            raise r.error("retry_interval", "expected a duration > 0")
        r.finish()
        out.append(cfg)
    return tuple(out)
