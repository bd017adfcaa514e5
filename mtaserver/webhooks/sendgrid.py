"""SendGrid's Event Webhook: our events in SendGrid's shape, signed the way SendGrid signs.

A receiver written for SendGrid keeps working unchanged: the body is a JSON array of event
objects (``email``, ``timestamp``, ``event``, ``sg_event_id``, ``sg_message_id``,
``smtp-id``, ``category``, custom args at the top level, and the event's own fields), and
``X-Twilio-Email-Event-Webhook-Signature`` is the base64 DER ECDSA P-256 / SHA-256
signature of ``timestamp + body``, the timestamp sent in
``X-Twilio-Email-Event-Webhook-Timestamp``. The public key is shown the way SendGrid's
dashboard shows it (base64 DER SubjectPublicKeyInfo), which SendGrid's verify helpers take.

Mapping (ours → SendGrid): accepted → one ``processed`` per recipient; deferred; delivered;
bounced → ``bounce`` (``type`` bounce for a dead address, blocked otherwise); suppressed →
``dropped``; open; click; unsubscribe (``group_unsubscribe`` for mail sent with an ``asm``
group); complaint → ``spamreport``. Other events have no SendGrid equivalent and are skipped,
as are the events of the DSNs we send to senders.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mtaserver.classify import REASONS
from mtaserver.config.webhooks import WebhookConfig
from mtaserver.errors import ConfigError
from mtaserver.model import StoredEvent
from mtaserver.storage.sqlite.outbox import MessageContext

SIGNATURE_HEADER: Final = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER: Final = "X-Twilio-Email-Event-Webhook-Timestamp"

Json = dict[str, Any]

# Our bounce categories (classify.CATEGORIES) as SendGrid's bounce_classification.
_CLASSIFICATION: Final = {
    "unknown-recipient": "Invalid Address",
    "domain-not-found": "Invalid Address",
    "mailbox-full": "Mailbox Unavailable",
    "mailbox-disabled": "Mailbox Unavailable",
    "message-too-large": "Content",
    "content-rejected": "Content",
    "spam-blocked": "Content",
    "reputation-blocked": "Reputation",
    "policy": "Reputation",
    "rate-limited": "Frequency or Volume Too High",
    "authentication-failed": "Technical",
    "expired": "Technical",
}
# Fields of SendGrid's own: a custom arg of the same name does not replace them.
_RESERVED: Final = frozenset(
    {"email", "timestamp", "event", "sg_event_id", "sg_message_id", "smtp-id", "category",
     "reason", "status", "response", "attempt", "type", "url", "useragent", "ip", "tls",
     "asm_group_id", "bounce_classification", "sg_machine_open", "send_at", "marketing_campaign_id"}
)  # fmt: skip


# -- keys and signatures ---------------------------------------------------------------------
def generate_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_key(path: Path, key: ec.EllipticCurvePrivateKey, *, force: bool = False) -> None:
    """Write the private key readable by its owner only; never over an existing key unless
    ``force`` (a replaced key breaks every receiver holding the old public key)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem(key))


def public_key_b64(key: ec.EllipticCurvePrivateKey) -> str:
    """The verification key as SendGrid's dashboard shows it: base64 DER SPKI, one line."""
    der = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode("ascii")


def load_key(path: Path, where: str = "") -> ec.EllipticCurvePrivateKey:
    """The P-256 private key in ``path``; a ConfigError naming the config entry otherwise."""
    at = f"{where}.signing_key: " if where else ""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{at}cannot read {path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(
            f"{at}{path} is not an unencrypted PEM private key; "
            "make one with: mtaserver webhooks keygen PATH"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError(
            f"{at}{path} is not an ECDSA P-256 key (SendGrid signs with P-256); "
            "make one with: mtaserver webhooks keygen PATH"
        )
    return key


def load_keys(hooks: Sequence[WebhookConfig]) -> dict[str, ec.EllipticCurvePrivateKey]:
    """Every SendGrid-format webhook's key by webhook name (raises on the first bad one)."""
    return {
        h.name: load_key(h.signing_key, h.where)
        for h in hooks
        if h.format == "sendgrid" and h.signing_key is not None
    }


def sign(key: ec.EllipticCurvePrivateKey, timestamp: int, body: bytes) -> str:
    """The signature header value: base64 of the DER ECDSA signature of timestamp + body."""
    der = key.sign(str(timestamp).encode("ascii") + body, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(der).decode("ascii")


# -- events ------------------------------------------------------------------------------------
def event_id(ev: StoredEvent, n: int) -> str:
    """``sg_event_id``: unique and the same on every retry (22 characters, like SendGrid's).
    The queue id's random bits keep it unique across a fresh database reusing event ids."""
    seed = f"{ev.id}:{ev.queue_id}:{ev.at!r}:{n}".encode()
    return base64.urlsafe_b64encode(hashlib.sha256(seed).digest()[:16]).decode().rstrip("=")


def message_id(ctx: MessageContext | None, queue_id: str | None, idx: int | None) -> str | None:
    """``sg_message_id``: starts with the send API's ``X-Message-Id`` (SendGrid's receivers
    split on the first dot to match it), then the queue id and the recipient's index; SMTP
    mail starts with the queue id (the ``250 queued as`` id)."""
    if queue_id is None:
        return None
    parts = [queue_id] if idx is None else [queue_id, str(idx)]
    if ctx is not None and ctx.x_message_id:
        parts.insert(0, ctx.x_message_id)
    return ".".join(parts)


def _text(data: Json, key: str) -> str | None:
    value = data.get(key)
    return None if value is None or value == "" else str(value)


def _dropped_reason(reason: str | None) -> str:
    """SendGrid's drop reason for the suppression entry's reason: a complaint, a bounce
    reason of the taxonomy (or an old ``soft-bounces:…`` label), else an unsubscribe (the
    recipient's own, an ``asm`` group's, an operator's or a privacy request's entry)."""
    r = (reason or "").lower()
    if r in ("feedback", "complaint"):
        return "Spam Reporting Address"
    if r in REASONS or "bounce" in r:
        return "Bounced Address"
    return "Unsubscribed Address"


def _deferred(ev: StoredEvent) -> Json:
    out: Json = {"response": _text(ev.data, "reply")}
    if isinstance(ev.data.get("attempts"), int):
        out["attempt"] = str(ev.data["attempts"])  # SendGrid sends it as a string
    return out


def _delivered(ev: StoredEvent) -> Json:
    return {"response": _text(ev.data, "reply"), "tls": 1 if ev.data.get("tls") else 0}


def _bounce(ev: StoredEvent) -> Json:
    d = ev.data
    reason = _text(d, "diagnostic") if d.get("source") == "async" else _text(d, "reply")
    return {
        "reason": reason or _text(d, "reply") or _text(d, "diagnostic"),
        "status": _text(d, "status"),
        "type": "bounce" if d.get("kind") == "hard" else "blocked",
        "bounce_classification": _CLASSIFICATION.get(str(d.get("category")), "Unclassified"),
    }


def _dropped(ev: StoredEvent) -> Json:
    return {"reason": _dropped_reason(_text(ev.data, "reason"))}


def _engagement(ev: StoredEvent) -> Json:
    out: Json = {"useragent": _text(ev.data, "user_agent"), "ip": _text(ev.data, "client_ip")}
    if ev.type == "open":
        out["sg_machine_open"] = bool(ev.data.get("machine"))
    if ev.type == "click":
        out["url"] = _text(ev.data, "url")
    return out


# Our type → (SendGrid's type, its own fields).
_MAP: Final[dict[str, tuple[str, Callable[[StoredEvent], Json]]]] = {
    "deferred": ("deferred", _deferred),
    "delivered": ("delivered", _delivered),
    "bounced": ("bounce", _bounce),
    "suppressed": ("dropped", _dropped),
    "open": ("open", _engagement),
    "click": ("click", _engagement),
    "unsubscribe": ("unsubscribe", _engagement),
    "complaint": ("spamreport", lambda ev: {}),
}


def _one(
    ev: StoredEvent, ctx: MessageContext | None, name: str, email: str, idx: int | None, n: int,
    own: Json,
) -> Json:  # fmt: skip
    out: Json = {
        "email": email,
        "timestamp": int(ev.at),
        "event": name,
        "sg_event_id": event_id(ev, n),
    }
    sg_id = message_id(ctx, ev.queue_id, idx)
    if sg_id is not None:
        out["sg_message_id"] = sg_id
    if ctx is not None:
        if ctx.message_id:  # the Message-ID header, in its angle brackets as SendGrid sends it
            mid = ctx.message_id
            out["smtp-id"] = mid if mid.startswith("<") else f"<{mid}>"
        categories = ctx.categories or ((ctx.campaign,) if ctx.campaign else ())
        if categories:
            out["category"] = list(categories)
        if ctx.asm_group_id is not None:
            out["asm_group_id"] = ctx.asm_group_id
    out.update((k, v) for k, v in own.items() if v is not None)
    if ctx is not None:
        for key, value in ctx.custom_args:  # flattened at the top level, as SendGrid does
            if key not in _RESERVED and key not in out:
                out[key] = value
    return out


def to_sendgrid(
    ev: StoredEvent, ctx: MessageContext | None, wanted: tuple[str, ...] = ()
) -> list[Json]:
    """The SendGrid events one of ours stands for (none when it has no equivalent, or its
    type is not ``wanted``; ``()`` = every type). The DSNs we send to senders are not
    shown: SendGrid sends none, and its receivers would take them for the app's own mail."""
    if ctx is not None and ctx.is_dsn:
        return []
    if ev.type == "accepted":
        if "processed" not in wanted and wanted:
            return []
        if ctx is None:
            return []
        send_at = ev.data.get("send_at")
        own: Json = {"send_at": int(send_at)} if isinstance(send_at, int | float) else {}
        return [
            _one(ev, ctx, "processed", address, idx, n, own)
            for n, (idx, address) in enumerate(ctx.recipients)
        ]
    mapped = _MAP.get(ev.type)
    if mapped is None or not ev.recipient:
        return []
    name, fields = mapped
    if name == "unsubscribe" and ctx is not None and ctx.asm_group_id is not None:
        name = "group_unsubscribe"
    if wanted and name not in wanted:
        return []
    idx = ev.data.get("idx")
    if not isinstance(idx, int) and ctx is not None:
        idx = next((i for i, a in ctx.recipients if a == ev.recipient), None)
    return [_one(ev, ctx, name, ev.recipient, idx if isinstance(idx, int) else None, 0, fields(ev))]
