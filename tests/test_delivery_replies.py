"""Reply parsing, dispositions and retry hints (pure helpers of the delivery agent)."""

import pytest

from mtaserver.delivery.replies import disposition_of, parse_reply, retry_hint
from mtaserver.model import Disposition, SmtpReply


def test_parse_reply_enhanced_and_multiline() -> None:
    r = parse_reply(550, "5.1.1 <x@y>: Recipient address rejected\n5.1.1 see https://help")
    assert r == SmtpReply(550, "<x@y>: Recipient address rejected see https://help", "5.1.1")
    assert parse_reply(250, "2.0.0 Ok: queued as ABC") == SmtpReply(
        250, "Ok: queued as ABC", "2.0.0"
    )
    assert parse_reply(421, "mx.example closing") == SmtpReply(421, "mx.example closing", None)
    # the enhanced class must match the reply code's class
    assert parse_reply(550, "4.2.2 odd").enhanced is None
    assert str(parse_reply(451, "4.7.1 greylisted")) == "451 4.7.1 greylisted"


@pytest.mark.parametrize(
    ("code", "disposition"),
    [(250, Disposition.DELIVERED), (251, Disposition.DELIVERED), (421, Disposition.DEFERRED),
     (452, Disposition.DEFERRED), (550, Disposition.BOUNCED), (554, Disposition.BOUNCED),
     (354, Disposition.DEFERRED), (0, Disposition.DEFERRED), (999, Disposition.DEFERRED)],
)  # fmt: skip
def test_disposition_from_the_code(code: int, disposition: Disposition) -> None:
    assert disposition_of(SmtpReply(code, "x")) is disposition


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("Rate limited, retry in 120 seconds", 120), ("try again in 5 minutes", 300),
     ("Please try again later in 2 hours", 7200), ("retry after 30s", 30),
     ("Greylisted, come back in 10 min", 600), ("4.7.0 Try again in 1 hour", 3600),
     ("too many connections", None), ("retry in 0 seconds", None),
     ("retry in 999999 hours", 86400)],
)  # fmt: skip
def test_retry_hints(text: str, seconds: float | None) -> None:
    assert retry_hint(text) == seconds
