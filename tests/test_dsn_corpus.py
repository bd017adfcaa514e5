"""The parser against real bounces, complaints and auto-replies from 60+ MTAs.

Expected values were written from what each message says (tests/data/bounces/expected.txt
and tests/data/corpora/*/expected.txt); this test reports recall/precision of recipients
and accuracy of status and kind, and holds the parser to the targets of issues #6 and #16,
on the in-sample and on the held-out part of the added corpora (bench.bounce_corpus).
"""

from __future__ import annotations

from bench import bounce_corpus
from mtaserver.dsn import parse_bounce
from mtaserver.dsn.recipient import reason_kind_of
from mtaserver.model import BounceReport
from tests.support.bounce_corpus import Expected, Scores, load_expected

EXPECTED = load_expected()


def _type_ok(exp: Expected, rep: BounceReport | None) -> bool:
    if exp.type in ("autoreply", "none"):
        return rep is None
    if exp.type == "complaint":
        return rep is not None and rep.is_complaint
    if exp.type in ("failed", "delayed"):
        if rep is None or rep.is_complaint:
            return False
        want = "failed" if exp.type == "failed" else "delayed"
        return all(r.action == want for r in rep.recipients)
    return True  # noaddr: a failure notice without a usable address


def score(entries: list[Expected] = EXPECTED) -> tuple[Scores, list[str]]:
    s = Scores()
    problems: list[str] = []
    for exp in entries:
        rep = parse_bounce(exp.path.read_bytes())
        if not _type_ok(exp, rep):
            s.type_errors += 1
            problems.append(f"{exp.file}: type {exp.type}, got {rep}")
        got = {r.recipient.lower(): r for r in rep.recipients} if rep else {}
        want = {a: (st, k) for a, st, k in exp.recipients}
        for addr, r in got.items():
            if addr not in want:
                s.fp += 1
                problems.append(f"{exp.file}: extra recipient {addr}")
                continue
            s.tp += 1
            status, kind = want[addr]
            if status == "-":
                continue
            s.judged += 1
            s.status_ok += r.status == status
            s.kind_ok += reason_kind_of(r) == kind
            if r.status != status or reason_kind_of(r) != kind:
                problems.append(
                    f"{exp.file}: {addr} {r.status}/{r.kind.value}, want {status}/{kind}"
                )
        for addr in want:
            if addr not in got:
                s.fn += 1
                problems.append(f"{exp.file}: missed {addr}")
    return s, problems


def test_corpus_is_large_and_varied() -> None:
    assert len(EXPECTED) >= 100
    mtas = {e.mta.split(" (")[0] for e in EXPECTED}
    assert len(mtas) >= 20, sorted(mtas)
    types = {e.type for e in EXPECTED}
    assert {"failed", "delayed", "complaint", "autoreply", "none"} <= types
    for e in EXPECTED:
        assert e.path.is_file(), e.file


def test_corpus_targets() -> None:
    s, problems = score()
    print("\nbounce corpus:", s.summary())  # shown with pytest -s; quoted in README
    held, _ = score([e for e in EXPECTED if e.held_out])
    print("held-out part:", held.summary())
    detail = s.summary() + "\n" + "\n".join(problems)
    assert s.recall >= 0.97, detail
    assert s.precision >= 0.99, detail
    assert s.status_accuracy >= 0.90, detail
    assert s.kind_accuracy >= 0.90, detail
    assert s.type_errors <= len(EXPECTED) // 20, detail


def test_complaint_and_autoreply_samples() -> None:
    by_file = {e.file: e for e in EXPECTED}
    arf = parse_bounce(by_file["sisimai/arf-05.eml"].path.read_bytes())
    assert arf is not None and arf.is_complaint
    assert [r.recipient for r in arf.recipients] == [
        "fake.rcpt@example.com",
        "fake.rcpt2@example.net",
    ]
    assert all(r.action == "complaint" and r.category == "complaint" for r in arf.recipients)
    assert arf.original_message_id == "8A025E63-47F5-CDA0-78D2-C0E5A944FB10@example.net"
    for name in ("rfc3834-01", "rfc3834-02", "rfc3834-03", "rfc3834-04"):
        assert parse_bounce(by_file[f"sisimai/{name}.eml"].path.read_bytes()) is None


def test_generic_status_replaced_by_specific_diagnostic() -> None:
    ses = parse_bounce(
        (EXPECTED[0].path.parent.parent / "sisimai/email-amazonses-03.eml").read_bytes()
    )
    assert ses is not None
    (r,) = ses.recipients
    # Status: 5.0.0 in the report; the diagnostic carries 5.2.2 (mailbox full).
    assert (r.status, r.category, r.kind.value) == ("5.2.2", "mailbox-full", "soft")
    assert r.reply_code == 550
    assert r.remote_mta == "192.0.2.222"


def test_added_corpora_meet_the_goals_in_sample_and_held_out() -> None:
    entries = bounce_corpus.load_all()
    assert {e.corpus for e in entries} >= {"bounceparser", "bounce_email", "baunsu", "generated"}
    for corpus in {e.corpus for e in entries} - {"bounces"}:
        part = [e for e in entries if e.corpus == corpus]
        if len(part) >= 8:  # the split keeps about 30% of every corpus out of sight
            assert 0.2 <= sum(e.held_out for e in part) / len(part) <= 0.45, corpus
    for held in (False, True):
        s = bounce_corpus.score([e for e in entries if e.held_out is held])
        detail = f"held_out={held} {s.metrics()}\n" + "\n".join(s.problems)
        for name, goal in bounce_corpus.GOALS.items():
            assert s.metrics()[name] >= goal, detail
        assert s.type_errors <= s.messages // 20, detail
