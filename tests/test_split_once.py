"""The header is split once per message: cleanup's fields given to DKIM sign the same bytes.

``sign_message(data, fields=…, body=…)`` skips dkimpy's parser; these tests check, over
generated headers, that it returns exactly what parsing ``data`` again would, and that the
handler's split (for the From: check) given to cleanup yields the same queued message.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtaserver.dkim import DkimMessageError, KeySet
from mtaserver.dkim import keys as K
from mtaserver.dkim.signer import sign_message
from mtaserver.model import Submission
from mtaserver.prepare import PrepareError, cleanup, split_header
from tests.support.dkimtools import make_key

NOW = int(time.time())
_KEYS: list[K.DkimKey] = []


@pytest.fixture(autouse=True, scope="module")
def _keys(tmp_path_factory: pytest.TempPathFactory) -> None:
    tmp: Path = tmp_path_factory.mktemp("keys")
    _KEYS[:] = [
        make_key(tmp, "example.com", "rsa1", K.Algorithm.RSA),
        make_key(tmp, "example.com", "ed1", K.Algorithm.ED25519),
    ]


FIELDS = st.sampled_from(
    [
        b"From: A <a@example.com>",
        b"From: b@example.com",
        b"To: x@dest.example",
        b"Subject: hello",
        b"Subject :spaced name",
        b"subject:\tlower",
        b"\tfolded continuation",
        b" another continuation",
        b"Date: Mon, 1 Jan 2024 00:00:00 +0000",
        b"Message-ID: <m@example.com>",
        b"Bcc: hidden@example.com",
        b"X-Mtaserver-Track: opens",
        b"Content-Type: text/plain",
        b"X-Empty:",
        b"not a header line",
        b"",
    ]
)
BODY = st.sampled_from([b"", b"body\r\n", b"line  with\tspaces \r\n\r\n\r\n", b"no final crlf"])


def _submission(data: bytes) -> Submission:
    return Submission(
        sender="a@example.com",
        recipients=("x@dest.example",),
        data=data,
        client_ip="127.0.0.1",
        helo="client.example",
        user=None,
        tls_version=None,
        listener="plain",
        received_at=float(NOW),
    )


@settings(max_examples=300, deadline=None)
@given(st.lists(FIELDS, max_size=10), BODY)
def test_cleanup_fields_sign_like_a_fresh_parse(lines: list[bytes], body: bytes) -> None:
    data = b"\r\n".join([*lines, b""]) + body
    sub = _submission(data)
    try:
        cleaned = cleanup(sub, queue_id="Q1", hostname="mx.example", max_header_size=10_000)
    except PrepareError:
        return
    again = cleanup(
        sub,
        queue_id="Q1",
        hostname="mx.example",
        max_header_size=10_000,
        header=split_header(data, 10_000),
    )
    assert again == cleaned
    keyset = KeySet.build(_KEYS)
    try:
        fresh = sign_message(cleaned.data, keyset, NOW)
    except DkimMessageError:
        with pytest.raises(DkimMessageError):
            sign_message(cleaned.data, keyset, NOW, cleaned.fields, cleaned.body)
        return
    assert sign_message(cleaned.data, keyset, NOW, cleaned.fields, cleaned.body) == fresh


def test_a_signed_message_from_split_fields_has_two_signatures() -> None:
    data = b"From: a@example.com\r\nSubject: s\r\n\r\nbody\r\n"
    cleaned = cleanup(_submission(data), queue_id="Q1", hostname="mx.example")
    out = sign_message(cleaned.data, KeySet.build(_KEYS), NOW, cleaned.fields, cleaned.body)
    assert out.count(b"DKIM-Signature:") == 2
    assert out.endswith(cleaned.data)
