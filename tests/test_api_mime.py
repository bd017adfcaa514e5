"""The direct MIME writer against the stdlib ``email`` package it replaces.

For generated requests (names and subjects with quotes, commas, non-ASCII and emoji;
bodies short, long-lined, mostly or not at all ASCII; attachments and inline parts), the
message written directly and the one the stdlib builds must read back the same through
the stdlib's parser: every header decoded, the MIME tree, every part's content. And the
direct writer must be what normally runs: it falls back only for what it leaves out.
"""

from __future__ import annotations

import base64
import email
import itertools
from collections.abc import Iterator
from email import policy
from email.message import EmailMessage
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtaserver.render import TemplateCache
from mtaserver.sendapi import MailRequest, compose, mime, parse_mail_send
from mtaserver.sendapi.model import Address

NOW = 1_700_000_000
text_chars = st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\u2028\u2029")
names = st.text(alphabet=text_chars, max_size=40).map(str.strip)
subjects = st.text(alphabet=text_chars, min_size=1, max_size=200).map(str.strip).filter(bool)
bodies = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126) | st.just("\n"),
            max_size=3000),
    st.text(alphabet=text_chars | st.just("\n"), max_size=2000),
    st.builds(lambda w, n: (w + " ") * n, st.sampled_from(["word", "Grüße", "x" * 90]),
              st.integers(0, 300)),
)  # fmt: skip
blobs = st.binary(min_size=1, max_size=3000)


def read(raw: bytes) -> EmailMessage:
    msg = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def shape(msg: EmailMessage) -> list[Any]:
    """Everything a reader sees, boundaries and encodings aside."""
    out: list[Any] = []
    for part in msg.walk():
        item: list[Any] = [part.get_content_type(), part.get_content_disposition(),
                           part.get_filename(), part["Content-ID"]]  # fmt: skip
        if not part.is_multipart():
            content = part.get_content()
            if isinstance(content, str):
                content = content.replace("\r\n", "\n")
            item.append(content)
        out.append(item)
    return out


def both(payload: dict[str, Any]) -> tuple[bytes, bytes, MailRequest]:
    req = parse_mail_send(payload, now=NOW).request
    assert req is not None
    made = []
    for direct in (True, False):
        ids = itertools.count()

        def message_id(domain: str, ids: Iterator[int] = ids) -> str:
            return f"<id{next(ids)}@{domain}>"

        out = compose(req, domain="mta.test", cache=TemplateCache(), now=NOW, direct=direct,
                      message_id=message_id)  # fmt: skip
        assert out.ok, out.errors
        made.append(out.messages[0].message)
    return made[0], made[1], req


def ws(text: str) -> str:
    return "".join(text.split())


def same(direct: bytes, stdlib: bytes, req: MailRequest) -> None:
    """Headers decode to exactly what was asked (the stdlib itself loses whitespace in
    some display names and splits some encoded words, so it is not the reference there);
    the MIME tree and every part's content as the stdlib builds them."""
    a, b = read(direct), read(stdlib)
    p = req.personalizations[0]
    for name, want in (("From", req.from_), ("To", p.to[0]), ("Cc", p.cc[0]),
                       ("Reply-To", req.reply_to)):  # fmt: skip
        assert want is not None
        (got,) = a[name].addresses
        # the stdlib's phrase parser collapses whitespace inside encoded words and puts a
        # space between adjacent ones (RFC 2047 6.2 says to drop it): it does so with
        # its own output too, so whitespace is not compared in display names
        assert (ws(got.display_name), got.addr_spec) == (ws(want.name or ""), want.email), name
    assert a["Subject"] == req.subject and a["X-Tag"] == dict(req.headers)["X-Tag"]
    for name in ("Message-ID", "Date"):
        assert a[name] == b[name], name
    assert shape(a) == shape(b)
    assert max(len(line) for line in direct.split(b"\r\n")) <= 998
    assert b"\n" not in direct.replace(b"\r\n", b"")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sender=names, to=names, subject=subjects, plain=bodies, html=bodies,
    tag=subjects, files=st.lists(blobs, max_size=2), inline=st.booleans(),
)  # fmt: skip
def test_direct_writer_reads_back_like_the_stdlib(
    sender: str, to: str, subject: str, plain: str, html: str, tag: str,
    files: list[bytes], inline: bool,
) -> None:  # fmt: skip
    attachments: list[dict[str, Any]] = [
        {"content": base64.b64encode(b).decode(), "filename": f"f{i}.bin",
         "type": "application/octet-stream"} for i, b in enumerate(files)
    ]  # fmt: skip
    if inline:
        attachments.append({"content": base64.b64encode(b"PNG").decode(), "filename": "l.png",
                            "type": "image/png", "disposition": "inline", "content_id": "l"})  # fmt: skip
    payload: dict[str, Any] = {
        "personalizations": [{"to": [{"email": "to@example.org", "name": to}],
                              "cc": [{"email": "cc@example.org", "name": sender}]}],
        "from": {"email": "news@example.com", "name": sender},
        "reply_to": {"email": "r@example.com", "name": to},
        "subject": subject,
        "headers": {"X-Tag": tag},
        "content": [{"type": "text/plain", "value": plain or " "},
                    {"type": "text/html", "value": html or " "}],
    }  # fmt: skip
    if attachments:
        payload["attachments"] = attachments
    direct, stdlib, req = both(payload)
    same(direct, stdlib, req)


def test_the_direct_writer_is_what_runs() -> None:
    direct, _, _ = both({
        "personalizations": [{"to": [{"email": "a@example.org", "name": "Zoë, Ü"}]}],
        "from": {"email": "n@example.com", "name": 'The "News"'}, "subject": "Grüße 👋",
        "content": [{"type": "text/plain", "value": "hi"}],
    })  # fmt: skip
    assert b"=?utf-8?b?" in direct and b'From: "The \\"News\\"" <n@example.com>' in direct


def test_what_it_leaves_out_goes_to_the_stdlib() -> None:
    # an SMTPUTF8 address: the stdlib's utf8 policy writes it
    direct, stdlib, _ = both({
        "personalizations": [{"to": [{"email": "zoë@example.org"}]}],
        "from": {"email": "n@example.com"}, "subject": "s",
        "content": [{"type": "text/plain", "value": "hi"}],
    })  # fmt: skip
    assert b"=?utf-8?b?" not in direct
    assert read(direct)["To"] == read(stdlib)["To"] == "zoë@example.org"


def test_a_line_break_never_reaches_a_header() -> None:
    # the payload already folds CR/LF in names and values to spaces; the writer refuses
    # one anyway, so a future path that skips that cannot start a header of its own
    with pytest.raises(mime.Unsupported):
        mime.fold("To", mime.address(Address("a@example.org", "A\r\nBcc: v@example.net")))
