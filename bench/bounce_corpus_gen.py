"""Writes ``tests/data/corpora/generated/``: complaint and bounce shapes no public corpus had.

Run: ``.venv/bin/python -m bench.bounce_corpus_gen`` (deterministic; the output is
committed, so this only needs running when a template changes).

The public corpora hold few feedback-loop variants, so these are built from the published
descriptions of each format: several RFC 5965 reports in one message, reports without
``Original-Rcpt-To`` (the recipient then comes from the returned message), Yahoo, Microsoft
JMRP (ARF and the older header-only form), Amazon SES and Mail.ru feedback loops, redacted
reports, and bounces that name the recipient only in a quoted header or an X-header of the
returned message. The expected answer of each file is known by construction and written
to ``expected.txt`` beside them. Being ours, their held-out part is a weaker check than
that of the public corpora.
"""

from __future__ import annotations

from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "corpora" / "generated"


def _returned(to: str, extra: str = "", msgid: str = "m1@news.example.com") -> str:
    return (
        "Return-Path: <b+q1x2y3@bounces.example.com>\n"
        "From: News <news@example.com>\n"
        f"To: {to}\n"
        "Subject: Our spring offers\n"
        f"Message-ID: <{msgid}>\n"
        f"{extra}"
        "Date: Mon, 2 Mar 2026 10:00:00 +0000\n\nHello.\n"
    )


def _arf(reports: list[tuple[str, str]], ua: str, subject: str = "FW: abuse report") -> str:
    """``reports``: (feedback-report fields, returned message) pairs."""
    parts = [
        "From: Feedback Loop <fbl@isp.example.net>\nTo: fbl@bounces.example.com\n"
        f"Subject: {subject}\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=feedback-report; boundary="B0"\n\n'
        "--B0\nContent-Type: text/plain\n\nThis is an email abuse report.\n"
    ]
    for fields, returned in reports:
        parts.append(
            "--B0\nContent-Type: message/feedback-report\n\n"
            f"Feedback-Type: abuse\nUser-Agent: {ua}\nVersion: 1\n{fields}\n"
            f"--B0\nContent-Type: message/rfc822\n\n{returned}\n"
        )
    parts.append("--B0--\n")
    return "".join(parts)


def _text_bounce(sender: str, subject: str, body: str, returned: str) -> str:
    return (
        f"From: {sender}\nTo: b+q1x2y3@bounces.example.com\nSubject: {subject}\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="B1"\n\n'
        f"--B1\nContent-Type: text/plain\n\n{body}\n"
        f"--B1\nContent-Type: message/rfc822\n\n{returned}\n--B1--\n"
    )


def messages() -> list[tuple[str, str, str, str, str]]:
    """(file, provider, type, recipients, text) for every generated message."""
    yahoo_ua = "Yahoo!-Mail-Feedback/2.0"
    out = [
        ("arf-two-reports.eml", "two ARF reports in one message", "complaint",
         "ann@isp.example.net - feedback; bob@isp.example.net - feedback",
         _arf([("Original-Rcpt-To: <ann@isp.example.net>\n", _returned("ann@isp.example.net")),
               ("", _returned("Bob <bob@isp.example.net>", msgid="m2@news.example.com"))],
              "ReportGen/1.0")),
        ("arf-yahoo-no-rcpt.eml", "Yahoo CFL", "complaint", "carol@yahoo.example - feedback",
         _arf([("Original-Mail-From: <b+q1x2y3@bounces.example.com>\n",
                _returned("carol@yahoo.example"))], yahoo_ua)),
        ("arf-jmrp.eml", "Microsoft JMRP (ARF)", "complaint", "dave@outlook.example - feedback",
         _arf([("Source-IP: 192.0.2.10\n",
                _returned("undisclosed-recipients:;",
                          "X-HmXmrOriginalRecipient: <dave@outlook.example>\n"))],
              "Microsoft JMRP")),
        ("jmrp-legacy.eml", "Microsoft JMRP (no ARF part)", "complaint",
         "erin@hotmail.example - feedback",
         _text_bounce("staff@hotmail.example", "complaint about message from 192.0.2.10",
                      "This is a complaint about a message you sent.",
                      _returned("erin@hotmail.example",
                                "X-HmXmrOriginalRecipient: <erin@hotmail.example>\n"))),
        ("arf-ses.eml", "Amazon SES feedback forwarding", "complaint",
         "frank@example.org - feedback",
         _arf([("Original-Rcpt-To: frank@example.org\nArrival-Date: Mon, 2 Mar 2026\n",
                _returned("frank@example.org"))], "Amazon SES Feedback Loop")),
        ("arf-mailru.eml", "Mail.ru FBL", "complaint", "gina@mail.example.ru - feedback",
         _arf([("", _returned('"Gina" <gina@mail.example.ru>',
                               "X-Mailru-Msgtype: newsletter\n"))], "Mail.Ru FBL")),
        ("arf-redacted.eml", "AOL-style redacted report", "complaint", "",
         _arf([("Redacted-Address: redacted@aol.example\n", _returned("redacted@aol.example"))],
              "AOL SComp")),
        ("arf-several-to.eml", "ARF, returned message to several", "complaint", "",
         _arf([("", _returned("a@isp.example.net, b@isp.example.net"))], "ReportGen/1.0")),
        ("arf-x-original-to.eml", "ARF, recipient in X-Original-To", "complaint",
         "hank@isp.example.net - feedback",
         _arf([("", _returned("list@news.example.com",
                               "X-Original-To: hank@isp.example.net\n"))], "ReportGen/1.0")),
        ("arf-not-spam.eml", "ARF not-spam report", "none", "",
         _arf([("", _returned("ivy@isp.example.net"))], "ReportGen/1.0").replace(
             "Feedback-Type: abuse", "Feedback-Type: not-spam")),
        ("quoted-header-only.eml", "notice naming the recipient only in quoted headers",
         "failed", "jane@corp.example 5.1.1 hard",
         "From: Mail Delivery System <MAILER-DAEMON@gw.corp.example>\n"
         "To: b+q1x2y3@bounces.example.com\nSubject: Undeliverable message\n\n"
         "Your message could not be delivered: no such user.\n\n"
         "> From: News <news@example.com>\n> To: jane@corp.example\n"
         "> Subject: Our spring offers\n"),
        ("x-failed-only.eml", "notice naming the recipient only in X-Failed-Recipients",
         "failed", "kim@corp.example 5.2.2 soft",
         "From: Mail Delivery System <MAILER-DAEMON@gw.corp.example>\n"
         "To: b+q1x2y3@bounces.example.com\nX-Failed-Recipients: kim@corp.example\n"
         "Subject: Mail delivery failed\n\nThe mailbox is full.\n"),
        ("fml-not-member.eml", "fml mailing list manager", "failed",
         "list@ml.example.jp 5.0.0 soft",
         _text_bounce("list-admin@ml.example.jp", "Not a member (list ML)",
                      "You are not a member of this mailing list <list@ml.example.jp>.\n"
                      "If you know the general guide of this list, please send mail with "
                      "the mail body\n  guide\nto the address list-ctl@ml.example.jp",
                      _returned("list@ml.example.jp"))),
        ("docomo-rejected.eml", "NTT docomo", "failed", "lee@docomo.example.jp 5.0.0 soft",
         "From: Postmaster@docomo.example.jp\nTo: b+q1x2y3@bounces.example.com\n"
         "Subject: Returned mail: see transcript for details\n\n"
         "The following recipient rejected your message because of the recipient's "
         "receiving settings (mail filter).\n\n<lee@docomo.example.jp>\n"),
        ("biglobe-unknown.eml", "BIGLOBE", "failed", "mia@biglobe.example.jp 5.1.1 hard",
         "From: postmaster@biglobe.example.jp\nTo: b+q1x2y3@bounces.example.com\n"
         "Subject: Returned mail\n\n   ----- The following addresses had delivery problems "
         "-----\n<mia@biglobe.example.jp>\n\n   ----- Non-delivered information -----\n"
         "User unknown\n"),
        ("aol-old.eml", "old AOL", "failed", "nick@aol.example 5.0.0 hard",
         "From: Mail Delivery Subsystem <MAILER-DAEMON@aol.example>\n"
         "To: b+q1x2y3@bounces.example.com\nSubject: Returned mail: User unknown\n\n"
         "The original message was received at Mon, 2 Mar 2026 10:00:00 -0500 (EST)\n\n"
         "   ----- The following addresses had permanent fatal errors -----\n"
         "<nick@aol.example>\n\n   ----- Transcript of session follows -----\n"
         "... while talking to air-xx01.mail.aol.example.:\n>>> RCPT To:<nick@aol.example>\n"
         "<<< 550 MAILBOX NOT FOUND\n550 <nick@aol.example>... User unknown\n"),
        ("sendmail-relay.eml", "Sendmail", "failed", "olga@corp.example 5.7.1 soft",
         "From: Mail Delivery Subsystem <MAILER-DAEMON@mx.example.com>\n"
         "To: b+q1x2y3@bounces.example.com\n"
         "Subject: Returned mail: see transcript for details\n\n"
         "   ----- The following addresses had permanent fatal errors -----\n"
         "<olga@corp.example>\n    (reason: 550 5.7.1 <olga@corp.example>... Relaying denied)\n"),
        ("einsundeins.eml", "1&1", "failed", "paul@web.example.de 5.0.0 soft",
         "From: Mail Delivery System <mailer-daemon@kundenserver.example>\n"
         "To: b+q1x2y3@bounces.example.com\nSubject: Mail delivery failed: returning message "
         "to sender\n\nThis message was created automatically by mail delivery software.\n\n"
         "A message that you sent could not be delivered to one or more of\nits recipients. "
         "This is a permanent error. The following address(es) failed:\n\n"
         "paul@web.example.de:\nSMTP error from remote server after transfer of mail text:\n"
         "host: mx.web.example.de\n554-Transaction failed\n554 Reject due to policy "
         "restrictions.\n"),
        ("ses-notification.eml", "Amazon SES (email notification)", "failed",
         "quinn@example.org 5.1.1 hard",
         "From: MAILER-DAEMON@email-bounces.amazonses.example\n"
         "To: b+q1x2y3@bounces.example.com\nSubject: Delivery Status Notification (Failure)\n"
         "MIME-Version: 1.0\n"
         'Content-Type: multipart/report; report-type=delivery-status; boundary="B2"\n\n'
         "--B2\nContent-Type: text/plain\n\nAn error occurred while trying to deliver the mail "
         "to the following recipients:\nquinn@example.org\n"
         "--B2\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; a1.amazonses.example"
         "\n\nAction: failed\nFinal-Recipient: rfc822; quinn@example.org\n"
         "Diagnostic-Code: smtp; 550 5.1.1 user unknown\nStatus: 5.1.1\n--B2--\n"),
        ("james-virus.eml", "Apache James", "failed", "rosa@corp.example 5.0.0 soft",
         "From: postmaster@james.corp.example\nTo: b+q1x2y3@bounces.example.com\n"
         "Subject: [BOUNCE]\n\nHi. This is the James mail server at james.corp.example.\n"
         "I'm afraid I wasn't able to deliver your message to the following addresses.\n"
         "This is a permanent error; I've given up. Sorry it didn't work out.  Below\n"
         "I include the list of recipients and the reason why I was unable to deliver\n"
         "your message.\n\nFailed recipient(s):\nrosa@corp.example\n\n"
         "Error message:\n550 Virus found in the message (Eicar-Test-Signature)\n"),
    ]  # fmt: skip
    return out


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Generated by bench/bounce_corpus_gen.py; expected answers known by construction.",
        '# file | mta/provider | type | recipients ("address status kind" separated by ";")',
    ]
    for name, provider, typ, rcpts, body in messages():
        (OUT / name).write_bytes(body.encode())
        lines.append(f"{name} | {provider} | {typ} | {rcpts}")
    (OUT / "expected.txt").write_text("\n".join(lines) + "\n")
    (OUT / "SOURCE").write_text(
        "Origin: generated by bench/bounce_corpus_gen.py of this project (no third-party "
        "text).\nLicence: the project's own.\n"
    )


if __name__ == "__main__":
    main()
