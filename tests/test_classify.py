"""The classification table: reasons, hard/soft/feedback by reason, most specific status."""

from __future__ import annotations

import pytest

from mtaserver.classify import (
    CATEGORIES,
    REASONS,
    Classifier,
    ClassifyTableError,
    best_status,
    category_of,
    classify,
    default_classifier,
    kind_of,
)
from mtaserver.model import BounceKind

HARD, SOFT = BounceKind.HARD, BounceKind.SOFT

CASES = [
    # (code, enhanced, text, category, kind)
    (
        550,
        "5.1.1",
        "<a@example.org>: Recipient address rejected: User unknown",
        "unknown-recipient",
        HARD,
    ),
    (
        450,
        "4.1.1",
        "Recipient address rejected: User unknown in local recipient table",
        "unknown-recipient",
        HARD,
    ),
    (552, "5.2.2", "Mailbox full", "mailbox-full", SOFT),
    (452, "4.2.2", "The email account that you tried to reach is over quota", "mailbox-full", SOFT),
    (
        550,
        "5.2.1",
        "The email account that you tried to reach is disabled",
        "mailbox-disabled",
        HARD,
    ),
    (
        554,
        None,
        "delivery error: dd This user doesn't have a yahoo.com account",
        "unknown-recipient",
        HARD,
    ),
    (
        550,
        None,
        "Host or domain name not found. Name service error for name=x.invalid",
        "domain-not-found",
        HARD,
    ),
    (550, "5.1.2", "bad destination system", "domain-not-found", HARD),
    (552, "5.3.4", "Message size exceeds fixed maximum message size", "message-too-large", SOFT),
    (554, "5.7.1", "Message rejected: virus found in attachment", "content-rejected", SOFT),
    (
        550,
        "5.7.1",
        "Our system has detected that this message is likely unsolicited mail",
        "spam-blocked",
        SOFT,
    ),
    (
        554,
        None,
        "Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
        "reputation-blocked",
        SOFT,
    ),
    (
        421,
        "4.7.28",
        "Our system has detected an unusual rate of unsolicited mail",
        "rate-limited",
        SOFT,
    ),
    (421, "4.7.0", "Try again later, closing connection.", "rate-limited", SOFT),
    (451, None, "Too many messages from this sender, slow down", "rate-limited", SOFT),
    (
        550,
        "5.7.26",
        "Unauthenticated email is not accepted due to domain's DMARC policy",
        "authentication-failed",
        SOFT,
    ),
    (
        550,
        "5.7.23",
        "The message was rejected because of Sender Policy Framework violation",
        "authentication-failed",
        SOFT,
    ),
    (554, "5.7.1", "<x@example.org>: Relay access denied", "policy", SOFT),
    (None, "4.4.7", "delivery time expired", "expired", SOFT),
    (554, None, "Transaction failed", "other", SOFT),  # no reason: not proof of a dead address
    (421, None, "Service not available, closing transmission channel", "other", SOFT),
]


@pytest.mark.parametrize(("code", "enhanced", "text", "category", "kind"), CASES)
def test_categories(
    code: int | None, enhanced: str | None, text: str, category: str, kind: BounceKind
) -> None:
    got = classify(code, enhanced, text)
    assert (got.category, got.kind) == (category, kind)


def test_kind_is_by_reason_not_class() -> None:
    assert classify(552, "5.2.2", "mailbox full").kind is SOFT
    assert classify(450, "4.1.1", "user unknown").kind is HARD
    # The status alone decides when the text says nothing.
    assert classify(550, "5.1.1", "").category == "unknown-recipient"
    assert classify(450, "4.2.2", "").category == "mailbox-full"


def test_specific_status_from_text_beats_generic() -> None:
    assert classify(None, "5.0.0", "smtp; 550 5.1.1 <x@y>... User unknown").status == "5.1.1"
    assert best_status("4.4.7", "452 4.2.2 over quota") == "4.2.2"
    assert best_status("5.1.1", "550 5.7.1 nope") == "5.1.1"  # a specific Status wins
    assert best_status(None, "from 10.5.1.1 host") is None  # not part of an IP address
    assert best_status(None, "nothing") is None


def test_default_status_follows_class() -> None:
    c = default_classifier()
    assert c.default_status("userunknown", 5) == "5.1.1"
    assert c.default_status("mailboxfull", 4) == "4.2.2"
    assert c.default_status("spamdetected", None) == "5.0.0"


def test_every_category_is_reachable() -> None:
    seen = {classify(*case[:3]).category for case in CASES}
    assert seen == set(CATEGORIES) - {"complaint"}  # complaints come from ARF, not replies


REASON_CASES = [
    # (code, enhanced, text, reason)
    (550, "5.1.1", "The email account that you tried to reach does not exist", "userunknown"),
    (550, None, "Host or domain name not found. Name service error for name=x", "hostunknown"),
    (550, "5.1.6", "recipient no longer on server", "hasmoved"),
    (556, "5.1.10", "Recipient address has null MX", "notaccept"),
    (550, None, "[SUSPEND] Mailbox currently suspended", "suspend"),
    (552, None, "Mailbox size limit exceeded", "mailboxfull"),
    (
        550,
        "5.2.3",
        "RESOLVER.RST.RecipSizeLimit; message too large for this recipient",
        "exceedlimit",
    ),
    (552, "5.3.4", "Message size exceeds fixed maximum message size", "mesgtoobig"),
    (550, None, "not accepting mail with attachments or embedded images", "filtered"),
    (550, None, "You are not a member of this mailing list", "rejected"),
    (554, None, "Client host [192.0.2.1] blocked using zen.spamhaus.org", "blocked"),
    (550, "5.7.1", "Message rejected as spam by Content Filtering", "spamdetected"),
    (554, None, "Message rejected: virus found in attachment", "virusdetected"),
    (550, "5.7.1", "Delivery not authorized, message refused", "policyviolation"),
    (554, None, "Messages without To: fields are not accepted here", "contenterror"),
    (550, "5.7.26", "Unauthenticated email is not accepted due to DMARC", "securityerror"),
    (554, None, "<x@example.org>: Relay access denied", "norelaying"),
    (421, "4.7.28", "unusual rate of unsolicited mail", "toomanyconn"),
    (451, None, "Local configuration error", "systemerror"),
    (None, None, "Could not initiate SMTP conversation: Connection timed out", "networkerror"),
    (None, "4.4.7", "delivery time expired", "expired"),
    (500, None, "Syntax error, command unrecognized", "syntaxerror"),
    (554, None, "Transaction failed", "undefined"),
]


@pytest.mark.parametrize(("code", "enhanced", "text", "reason"), REASON_CASES)
def test_reasons(code: int | None, enhanced: str | None, text: str, reason: str) -> None:
    got = classify(code, enhanced, text)
    assert got.reason == reason
    assert got.category == category_of(reason)
    assert got.reason_kind == kind_of(reason)


def test_only_dead_addresses_are_hard() -> None:
    hard = {r for r in REASONS if kind_of(r) == "hard"}
    assert hard == {"userunknown", "hostunknown", "hasmoved", "notaccept", "suspend"}
    assert kind_of("feedback") == "feedback"
    assert all(kind_of(r) == "soft" for r in REASONS if r not in hard | {"feedback"})
    # a 5xx that rejects this message is soft however permanent it sounds
    for text in ("550 5.7.1 spam", "554 blocked using bl.spamcop.net", "550 Relaying denied"):
        assert classify(None, None, text).kind is SOFT


def _table() -> dict[str, object]:
    reasons = {r: {"kind": "soft", "category": "other"} for r in REASONS}
    return {"reasons": reasons, "rule": [{"reason": "undefined"}]}


def test_table_is_validated() -> None:
    good = _table()
    Classifier(good)
    with pytest.raises(ClassifyTableError):
        Classifier({**good, "rule": [{"reason": "nope"}]})
    with pytest.raises(ClassifyTableError):
        Classifier({**good, "rule": [{"reason": "undefined", "text": "("}]})
    with pytest.raises(ClassifyTableError):
        Classifier({**good, "rule": [{"reason": "undefined", "text": "x"}]})  # no catch-all
    with pytest.raises(ClassifyTableError):
        Classifier(
            {**good, "rule": [{"reason": "undefined", "status": "5.x"}, {"reason": "undefined"}]}
        )
    with pytest.raises(ClassifyTableError):
        Classifier({**good, "reasons": {**good["reasons"], "speeding": {"kind": "soft"}}})
    bad_kind = {**good["reasons"], "userunknown": {"kind": "permanent", "category": "other"}}
    with pytest.raises(ClassifyTableError):
        Classifier({**good, "reasons": bad_kind})


def test_huge_text_is_cheap() -> None:
    got = classify(550, None, "a" * 5_000_000 + " user unknown")
    assert got.category == "other"  # only the first 4 KiB is read


def test_matching_ignores_case_but_keeps_escapes() -> None:
    assert classify(550, None, "USER UNKNOWN").category == "unknown-recipient"
    assert classify(550, None, "Mailbox Is FULL").category == "mailbox-full"
    # \S in "listed (?:at|in|on|by) (?:the )?\S*(...)" must stay \S, not become \s.
    assert classify(554, None, "IP Listed in zen.spamhaus.org").category == "reputation-blocked"
