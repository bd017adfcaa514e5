"""``[[webhooks]]``: endpoints that receive events as signed JSON POSTs.

Each entry: ``url`` (http or https), ``events`` (types wanted; empty or ``["*"]`` = all),
``secret`` or ``secret_file`` (HMAC-SHA256 key), ``timeout`` per POST, ``max_retry_time``
(give up on an event after that long), ``retry_interval`` (first back-off, doubling up to
``max_retry_interval``), ``concurrency`` (POSTs in flight), and an optional ``name`` (default:
the url) that keys the durable outbox — renaming an entry drops its pending events.

``format = "sendgrid"`` posts SendGrid's Event Webhook instead (a JSON array of up to
``batch_size`` events, signed with ECDSA P-256 as SendGrid signs): ``signing_key`` is the
path of the PEM private key (``mtaserver webhooks keygen``), ``events`` may name SendGrid's
event types, and ``secret`` is not used. The config holds the path only; the webhook service
loads the key (so a bad key is reported at start and on reload, naming this entry).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mtaserver.config.reader import Reader

EVENT_TYPES = (
    "accepted", "delivered", "deferred", "bounced", "complaint", "unsubscribe", "open",
    "click", "suppressed", "dsn_sent", "deleted", "expired",
)  # fmt: skip
FORMATS = ("native", "sendgrid")
# SendGrid's event types and the event of ours each comes from (``mtaserver.webhooks``).
SENDGRID_EVENTS: dict[str, str] = {
    "processed": "accepted", "deferred": "deferred", "delivered": "delivered",
    "bounce": "bounced", "dropped": "suppressed", "open": "open", "click": "click",
    "unsubscribe": "unsubscribe", "group_unsubscribe": "unsubscribe",
    "spamreport": "complaint",
}  # fmt: skip


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
    format: str = "native"  # or "sendgrid"
    signing_key: Path | None = None  # sendgrid: the ECDSA P-256 private key (PEM)
    batch_size: int = 1  # events per POST (sendgrid: an array of up to this many)
    sendgrid_events: tuple[str, ...] = ()  # sendgrid: the types wanted; () = all
    where: str = ""  # "config.toml: webhooks[0]", for errors found when the key is loaded

    def wants(self, event_type: str) -> bool:
        return not self.events or event_type in self.events


def _signing(r: Reader, fmt: str) -> tuple[str, Path | None]:
    """The HMAC secret (native) or the signing key's path (sendgrid), exactly one."""
    secret: str | None = r.string("secret", None)
    secret_file = r.path("secret_file", None, must_exist=True, readable=True)
    signing_key: Path | None = r.path("signing_key", None, must_exist=True, readable=True)
    if fmt == "sendgrid":
        if signing_key is None:
            raise r.error("signing_key", 'format = "sendgrid" needs signing_key, the ECDSA '
                          "private key file (mtaserver webhooks keygen PATH)")  # fmt: skip
        if secret is not None or secret_file is not None:
            key = "secret" if secret is not None else "secret_file"
            raise r.error(key, 'not used with format = "sendgrid" (it signs with signing_key)')
        return "", signing_key
    if signing_key is not None:
        raise r.error("signing_key", 'only used with format = "sendgrid"')
    if (secret is None) == (secret_file is None):
        raise r.error("secret", "set exactly one of secret or secret_file")
    if secret_file is not None:
        try:
            secret = secret_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise r.error("secret_file", f"cannot read {secret_file}: {exc}") from None
    if not secret or len(secret) < 16:
        raise r.error("secret", "expected a secret of at least 16 characters")
    return secret, None


def parse(readers: list[Reader]) -> tuple[WebhookConfig, ...]:
    out: list[WebhookConfig] = []
    names: set[str] = set()
    for r in readers:
        url = r.string("url")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise r.error("url", f"expected an http:// or https:// URL, got {url!r}")
        fmt = r.string("format", "native")
        if fmt not in FORMATS:
            raise r.error("format", f"expected one of {', '.join(FORMATS)}, got {fmt!r}")
        events = r.str_list("events", ())
        if "*" in events:
            events = ()
        sg_events: tuple[str, ...] = ()
        if fmt == "sendgrid":
            for e in events:
                if e not in SENDGRID_EVENTS:
                    raise r.error("events", f"expected SendGrid event types "
                                  f"({', '.join(SENDGRID_EVENTS)}), got {e!r}")  # fmt: skip
            sg_events = tuple(dict.fromkeys(events))
            # The trigger queues only the events of ours that map to a SendGrid event.
            events = list(dict.fromkeys(SENDGRID_EVENTS[e] for e in sg_events or SENDGRID_EVENTS))
        for e in events:
            if not e or not all(c.isalnum() or c in "_-." for c in e):
                raise r.error("events", f"expected event type names, got {e!r}")
        secret, signing_key = _signing(r, fmt)
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
            format=fmt,
            signing_key=signing_key,
            batch_size=r.integer("batch_size", 100 if fmt == "sendgrid" else 1, min=1, max=10_000),
            sendgrid_events=sg_events,
            where=r.where(),
        )
        if cfg.format == "native" and cfg.batch_size != 1:
            raise r.error("batch_size", 'only format = "sendgrid" posts batches')
        if cfg.timeout <= 0:
            raise r.error("timeout", "expected a duration > 0")
        if cfg.retry_interval <= 0:
            raise r.error("retry_interval", "expected a duration > 0")
        r.finish()
        out.append(cfg)
    return tuple(out)
