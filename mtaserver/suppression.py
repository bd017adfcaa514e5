"""The suppression list: addresses we must not send to, and why.

Scope: an entry is either **global** (``scope=None``) or limited to one **sending domain**.
Only a dead address — its reason's kind is ``hard`` in ``data/classify.toml`` (user
unknown, host unknown, has moved, does not accept mail, disabled account) — is suppressed
globally: it is just as dead for every sender on this server. A complaint (kind
``feedback``) or an unsubscribe concerns one sender: a recipient who reported brand A's
newsletter has said nothing about brand B's invoices, so it suppresses only for the sending
domain. Every other reason (mailbox full, spam verdict, blocklisted IP, policy, rate...)
rejects *this message*, not the address: it is counted and never suppresses.
``check(address, sender_domain)`` matches global entries and entries for that domain.

:func:`decide` is that policy, the one function synchronous replies (the scheduler's
bounce path) and asynchronous bounces and complaints (``inbound``) both go through;
:func:`review` judges an existing entry again (``mtaserver suppression review``).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from mtaserver.classify import REASONS, category_of, default_classifier, kind_of
from mtaserver.config.inbound import SuppressionConfig
from mtaserver.errors import ConfigError

GLOBAL = "suppress"  # every sender
SENDER = "suppress-sender"  # the sending domain only
COUNT = "count"  # soft-bounce counter, never a suppression
UNSUBSCRIBE = "unsubscribe"  # not a bounce reason: the recipient's own word about one sender
# Sources of entries the policy did not make: an operator's, a privacy request's, an
# unsubscribe's. Every other entry (async, sync, delivery, complaint) came from a bounce.
NOT_POLICY_SOURCES = ("manual", "privacy", "tracking", "unsubscribe")
_LEGACY_PREFIX = "soft-bounces:"  # entries the removed soft-bounce threshold made


@dataclass(frozen=True, slots=True)
class Suppression:
    address: str
    scope: str | None  # None = global; else the sending domain
    reason: str
    source: str
    created_at: float
    expires_at: float | None
    event_id: int | None = None
    queue_id: str | None = None
    reply: str | None = None  # the reply or diagnostic it was decided on (None before 0100)


@dataclass(frozen=True, slots=True)
class SuppressionDecision:
    """What one bounce, complaint or unsubscribe does to the list."""

    action: str  # GLOBAL | SENDER | COUNT
    reason: str
    scope: str | None = None  # the sending domain, for SENDER

    @property
    def suppresses(self) -> bool:
        return self.action != COUNT


def decide(reason: str, kind: str, sender_domain: str | None) -> SuppressionDecision:
    """The suppression policy: ``kind`` hard → global; feedback (or an unsubscribe) → this
    sending domain; anything else → counted only. A complaint about a message with no
    sending domain (a null sender) cannot be scoped, and is counted rather than widened."""
    if kind == "hard":
        return SuppressionDecision(GLOBAL, reason)
    if kind == "feedback" or reason == UNSUBSCRIBE:
        scope = _scope_key(sender_domain)
        if scope:
            return SuppressionDecision(SENDER, reason, scope)
    return SuppressionDecision(COUNT, reason)


def narrowed(
    label: str, kind: str | None, sender_domain: str | None, policy: SuppressionConfig
) -> SuppressionDecision | None:
    """:func:`decide` for a stored or reported reason ``label`` (read through
    :func:`reason_from_label`; ``kind`` defaults to the reason's own), then narrowed by
    the operator's ``[inbound.suppression.policy]``, which may only weaken it: None when
    the policy ignores the category, a count where it says count. What every store's
    ``apply`` does, whatever the backend."""
    reason = reason_from_label(label) or "undefined"
    decision = decide(reason, kind or kind_of(reason), sender_domain)
    action = policy.action(UNSUBSCRIBE if reason == UNSUBSCRIBE else category_of(reason))
    if action == "ignore":
        return None
    if action == COUNT and decision.suppresses:
        return SuppressionDecision(COUNT, reason)
    return decision


def reason_from_label(label: str) -> str | None:
    """The taxonomy reason a stored ``reason`` label stands for: itself when it is one;
    for labels written before the taxonomy (a category such as ``unknown-recipient``, or
    ``soft-bounces:mailbox-full``) the first reason of that category, which has the same
    kind; None when the label says nothing (``manual``, free text)."""
    if label in REASONS or label == UNSUBSCRIBE:
        return label
    category = label.removeprefix(_LEGACY_PREFIX)
    if category == "other":
        return "undefined"
    for name, info in default_classifier().reasons.items():
        if info.category == category:
            return name
    return None


_CODE_RE = re.compile(r"^\s*([245]\d\d)[ -]")


def reason_of_reply(text: str) -> str:
    """Classify a stored reply (``550 5.7.1 ...``) or diagnostic with today's table."""
    m = _CODE_RE.match(text)
    return default_classifier().classify(int(m.group(1)) if m else None, None, text).reason


@dataclass(frozen=True, slots=True)
class Review:
    """An entry judged again: the reason it stands for today and whether policy keeps it."""

    entry: Suppression
    reason: str
    basis: str  # "reply" (reclassified text) | "recorded" (its reason) | "label" (old label)
    keep: bool


def review(entry: Suppression, text: str | None = None) -> Review | None:
    """Judge an entry the policy made with today's table; None for entries it did not make
    (manual, privacy, unsubscribes) or whose reason cannot be known. An entry recorded
    without a taxonomy reason is judged by ``text`` — its own stored reply, else the
    bounce event's — and only without text by its old label."""
    if entry.source in NOT_POLICY_SOURCES or entry.reason == UNSUBSCRIBE:
        return None
    recorded = entry.reason in REASONS
    text = entry.reply or text
    if recorded:
        reason, basis = entry.reason, "recorded"
    elif text:
        reason, basis = reason_of_reply(text), "reply"
    else:
        label = reason_from_label(entry.reason)
        if label is None:
            return None
        reason, basis = label, "label"
    # Dead addresses and complaints stay (a complaint whatever scope an older policy gave
    # it); everything else is what the policy now only counts.
    return Review(entry, reason, basis, kind_of(reason) in ("hard", "feedback"))


def normalize(address: str) -> str:
    return address.strip().strip("<>").strip().lower()


def valid_address(address: str) -> str:
    """``address`` if it looks like one (``local@domain``, no spaces); the CLI and the admin
    API refuse the same strings."""
    local, at, domain = address.strip().strip("<>").rpartition("@")
    if not at or not local or not domain or " " in address:
        raise ConfigError(f"not an email address: {address!r}")
    return address


def address_hash(address: str) -> str:
    """How an erased address stays on the list (``mtaserver privacy erase``).

    A SHA-256 of the normalized address: the address itself is gone, yet ``check`` of the
    same address still matches. Not a secret: whoever holds a candidate address can test it,
    which is exactly what keeps it suppressed.
    """
    digest = hashlib.sha256(b"mtaserver-suppression\x00" + normalize(address).encode())
    return "sha256:" + digest.hexdigest()


def _scope_key(scope: str | None) -> str:
    return (scope or "").strip().lower().rstrip(".")
