"""Reasons on parsed bounces, complaint variants, and what ``mtaserver dsn parse`` prints."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mtaserver.dsn import parse_bounce
from mtaserver.dsn.recipient import ParsedRecipient, reason_kind_of, reason_of
from mtaserver.model import BouncedRecipient, BounceKind
from tests.test_dsn import DSN

GENERATED = Path(__file__).resolve().parent / "data" / "corpora" / "generated"


def test_every_recipient_carries_a_reason() -> None:
    rep = parse_bounce(DSN)
    assert rep is not None
    a, b, _ = rep.recipients
    assert isinstance(a, ParsedRecipient) and isinstance(b, ParsedRecipient)
    assert (a.reason, a.reason_kind) == ("userunknown", "hard")
    assert (b.reason, b.reason_kind) == ("mailboxfull", "soft")


def test_a_5xx_about_the_message_is_soft() -> None:
    spam = DSN.replace(
        b"550 5.1.1 <a@example.org>: Recipient address rejected: User unknown",
        b"550 5.7.1 Message rejected as spam by Content Filtering",
    ).replace(b"Status: 5.1.1", b"Status: 5.7.1")
    rep = parse_bounce(spam)
    assert rep is not None
    a = rep.recipients[0]
    assert (reason_of(a), reason_kind_of(a), a.kind) == ("spamdetected", "soft", BounceKind.SOFT)


def test_two_reports_and_missing_original_rcpt_to() -> None:
    rep = parse_bounce((GENERATED / "arf-two-reports.eml").read_bytes())
    assert rep is not None and rep.is_complaint
    assert [r.recipient for r in rep.recipients] == ["ann@isp.example.net", "bob@isp.example.net"]
    assert {reason_kind_of(r) for r in rep.recipients} == {"feedback"}


def test_jmrp_and_redacted_reports() -> None:
    for name, want in (
        ("arf-jmrp.eml", ["dave@outlook.example"]),
        ("jmrp-legacy.eml", ["erin@hotmail.example"]),
        ("arf-redacted.eml", []),  # inbound falls back to the VERP token / Message-ID
        ("arf-several-to.eml", []),  # which of several complained is unknown
    ):
        rep = parse_bounce((GENERATED / name).read_bytes())
        assert rep is not None and rep.is_complaint, name
        assert [r.recipient for r in rep.recipients] == want, name
    assert parse_bounce((GENERATED / "arf-not-spam.eml").read_bytes()) is None


def test_reason_of_hand_built_recipients() -> None:
    plain = BouncedRecipient("a@b.example", "failed", "5.0.0", None, "", None, "other",
                             BounceKind.HARD)  # fmt: skip
    assert reason_of(plain) == "undefined" and reason_kind_of(plain) == "soft"
    complaint = BouncedRecipient("a@b.example", "complaint", None, None, "", None,
                                 "complaint", BounceKind.HARD)  # fmt: skip
    assert reason_kind_of(complaint) == "feedback"


def test_cli_prints_reason_and_kind(tmp_path: Path) -> None:
    f = tmp_path / "b.eml"
    f.write_bytes(DSN)
    out = subprocess.run(
        [sys.executable, "-m", "mtaserver", "dsn", "parse", str(f)],
        capture_output=True,
        check=True,
    ).stdout.decode()
    rows = [json.loads(line) for line in out.splitlines()]
    assert [(r["recipient"], r["reason"], r["kind"]) for r in rows] == [
        ("a@example.org", "userunknown", "hard"),
        ("b@example.org", "mailboxfull", "soft"),
        ("c@example.org", "undefined", "soft"),
    ]
    f.write_bytes((GENERATED / "arf-ses.eml").read_bytes())
    out = subprocess.run(
        [sys.executable, "-m", "mtaserver", "dsn", "parse", str(f)],
        capture_output=True,
        check=True,
    ).stdout.decode()
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert (row["recipient"], row["reason"], row["kind"], row["complaint"]) == (
        "frank@example.org",
        "feedback",
        "feedback",
        True,
    )
