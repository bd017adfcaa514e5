"""The per-recipient result of a parsed bounce, with its reason.

``BouncedRecipient`` (in :mod:`mtaserver.model`) is what the rest of the server consumes;
the parser returns this subclass so every result also says *why* it failed, in the reason
taxonomy of :mod:`mtaserver.classify`, and whether that reason means the address is dead
(``hard``), worth another try (``soft``) or a complaint (``feedback``). Code that builds
plain ``BouncedRecipient`` values itself (VERP-only notices) gets a reason from
:func:`reason_of`, so callers never have to care which of the two they hold.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtaserver.classify import kind_of
from mtaserver.model import BouncedRecipient

# A plain BouncedRecipient's category -> the reason it most likely stands for.
_CATEGORY_REASON = {
    "unknown-recipient": "userunknown",
    "mailbox-disabled": "suspend",
    "domain-not-found": "hostunknown",
    "mailbox-full": "mailboxfull",
    "message-too-large": "mesgtoobig",
    "content-rejected": "contenterror",
    "spam-blocked": "spamdetected",
    "reputation-blocked": "blocked",
    "rate-limited": "toomanyconn",
    "authentication-failed": "securityerror",
    "policy": "policyviolation",
    "expired": "expired",
    "complaint": "feedback",
}


@dataclass(frozen=True, slots=True)
class ParsedRecipient(BouncedRecipient):
    """A reported recipient and the reason of its failure (see ``classify.REASONS``)."""

    reason: str = "undefined"

    @property
    def reason_kind(self) -> str:
        """``hard`` (address or domain dead) | ``soft`` | ``feedback`` (a complaint)."""
        return kind_of(self.reason)


def reason_of(r: BouncedRecipient) -> str:
    """The reason of any reported recipient, parsed or built by hand."""
    if isinstance(r, ParsedRecipient):
        return r.reason
    if r.action == "complaint":
        return "feedback"
    return _CATEGORY_REASON.get(r.category, "undefined")


def reason_kind_of(r: BouncedRecipient) -> str:
    """``hard`` | ``soft`` | ``feedback`` for any reported recipient."""
    return kind_of(reason_of(r))
