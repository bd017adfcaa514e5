"""The public endpoint over real HTTP: pixel, redirect, open-redirect matrix, RFC 8058."""

from __future__ import annotations

import base64
import logging
import re
import sqlite3

import pytest
import yarl

from mtaserver.tracking.tokens import CLICK, TokenCodec
from mtaserver.tracking.web import GIF, redact_path
from tests.tracking.conftest import BROWSER, Stack
from tests.tracking.helpers import codec

URL = "https://shop.example.com/sale?id=42&utm_source=mail"


def _path(stack: Stack, kind: str, token: str) -> str:
    return f"{stack.base}/{kind}/{token}" + (".gif" if kind == "o" else "")


async def test_pixel_is_a_transparent_gif_and_counts_one_open(stack: Stack) -> None:
    await stack.message("Q1", ("a@example.org",))
    await stack.outcome("Q1", 0, "a@example.org", "delivered")
    stack.clock.advance(3600)
    tok = codec().open_token("Q1", 0)
    async with stack.http.get(_path(stack, "o", tok)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "image/gif"
        assert "no-store" in resp.headers["Cache-Control"]
        assert await resp.read() == GIF
    async with stack.http.head(_path(stack, "o", tok)) as resp:
        assert resp.status == 200  # answered ...
    await stack.settle()
    opens = await stack.events("open")
    assert len(opens) == 1  # ... but HEAD never counted
    qid, rcpt, data = opens[0]
    assert (qid, rcpt) == ("Q1", "a@example.org")
    assert data["machine"] is False
    assert data["user_agent"] == BROWSER
    assert data["client_ip"] == "127.0.0.0"  # truncated per ip_privacy
    assert data["user"] == "alice"


async def test_click_redirects_to_the_signed_url_exactly(stack: Stack) -> None:
    await stack.message("Q2", ("a@example.org",), campaign="nov")
    await stack.outcome("Q2", 0, "a@example.org", "delivered")
    stack.clock.advance(3600)
    for target in (URL, "https://example.org/single?q=a%20b", "http://example.net/p#frag",
                   "https://example.de/ä?x=1&y=2"):  # fmt: skip
        tok = codec().click_token("Q2", 0, target, 0, 1)
        async with stack.http.get(_path(stack, "c", tok), allow_redirects=False) as resp:
            assert resp.status == 302
            assert "no-store" in resp.headers["Cache-Control"]
            loc = resp.headers["Location"]
            assert loc == target.replace("ä", "%C3%A4")
    await stack.settle()
    clicks = await stack.events("click")
    assert [d["url"] for _, _, d in clicks][:1] == [URL]
    assert clicks[0][2]["campaign"] == "nov"


BACKSLASH_URL = b"https:" + b"\\" * 2 + b"evil.example"


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(tok: str) -> bytes:
    return base64.urlsafe_b64decode(tok + "=" * (-len(tok) % 4))


def _forge(key_secret: bytes, payload: bytes) -> str:
    return TokenCodec((key_secret,))._seal(payload)


@pytest.mark.parametrize(
    "case",
    [
        "tampered",
        "truncated",
        "javascript",
        "scheme-relative",
        "backslash-host",
        "data-url",
        "other-key",
        "spliced-other-message",
        "open-token-on-click",
        "unsubscribe-token-on-click",
        "url-parameter",
        "url-parameter-no-token",
        "path-traversal",
        "double-slash-path",
        "empty",
    ],
)
async def test_open_redirect_matrix_answers_404_without_location(stack: Stack, case: str) -> None:
    c = codec()
    good = c.click_token("QA", 0, URL, 0, 1)
    other = c.click_token("QB", 0, "https://other.example/", 0, 1)
    head = bytes([CLICK, 2]) + b"QA" + b"\x00\x00\x01"
    from tests.tracking.helpers import SECRET

    paths = {
        "tampered": f"/c/{good[:10]}{'A' if good[10] != 'A' else 'B'}{good[11:]}",
        "truncated": f"/c/{good[:-3]}",
        "javascript": f"/c/{_forge(SECRET, head + b'javascript:alert(document.cookie)')}",
        "scheme-relative": f"/c/{_forge(SECRET, head + b'//evil.example/')}",
        "backslash-host": "/c/" + _forge(SECRET, head + BACKSLASH_URL),
        "data-url": f"/c/{_forge(SECRET, head + b'data:text/html,<script>1</script>')}",
        "other-key": f"/c/{TokenCodec((b'another-deployment-secret-123456',)).click_token('QA', 0, 'https://evil.example/', 0, 1)}",
        # Payload of message QB with the MAC of message QA's token.
        "spliced-other-message": "/c/" + _b64(_unb64(other)[:-16] + _unb64(good)[-16:]),
        "open-token-on-click": f"/c/{c.open_token('QA', 0)}",
        "unsubscribe-token-on-click": f"/c/{c.unsubscribe_token('QA', 0)}",
        "url-parameter": f"/c/{good}?url=https://evil.example/",
        "url-parameter-no-token": "/c?url=https://evil.example/",
        "path-traversal": f"/c/../c/{good}/..%2F..%2Fevil",
        "double-slash-path": "//evil.example/c/x",
        "empty": "/c/",
    }
    async with stack.http.get(stack.base + paths[case], allow_redirects=False) as resp:
        assert resp.status == 404, case
        assert "Location" not in resp.headers
    await stack.settle()
    assert await stack.events("click") == []


async def test_rfc8058_one_click_unsubscribe_over_http(stack: Stack) -> None:
    await stack.message("Q3", ("a@example.org", "b@example.org"), sender="news@example.com")
    tok = codec().unsubscribe_token("Q3", 1)
    url = _path(stack, "u", tok)
    # GET shows a confirmation page and changes nothing (scanners GET everything).
    for _ in range(2):
        async with stack.http.get(url) as resp:
            assert resp.status == 200
            page = await resp.text()
            assert 'method="post"' in page and 'name="List-Unsubscribe" value="One-Click"' in page
            assert tok not in page
    async with stack.http.head(url) as resp:
        assert resp.status == 200
    assert stack.unsubscribed.calls == []
    assert (await stack.unsubscribed.store.check("b@example.org", "example.com")) is None
    assert await stack.events("unsubscribe") == []
    # A POST without the RFC 8058 body is refused.
    async with stack.http.post(url, data={"List-Unsubscribe": "yes"}) as resp:
        assert resp.status == 400
    assert stack.unsubscribed.calls == []
    # The one-click POST, as a mailbox provider sends it.
    async with stack.http.post(
        url,
        data=b"List-Unsubscribe=One-Click",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    ) as resp:
        assert resp.status == 200
        assert "Unsubscribed" in await resp.text()
    assert stack.unsubscribed.calls == [("example.com", "b@example.org", "Q3")]
    store = stack.unsubscribed.store
    assert (await store.check("b@example.org", "example.com")) is not None
    assert (await store.check("b@example.org", "other.example")) is None  # per sender only
    assert (await store.check("a@example.org", "example.com")) is None
    (ev,) = await stack.events("unsubscribe")
    assert ev[0:2] == ("Q3", "b@example.org")
    # multipart/form-data is also accepted.
    import aiohttp

    form = aiohttp.FormData()
    form.add_field("List-Unsubscribe", "One-Click")
    form.add_field("x", "y")
    async with stack.http.post(url, data=form) as resp:
        assert resp.status == 200
    # A forged token cannot unsubscribe anyone.
    async with stack.http.post(_path(stack, "u", tok[:-2] + "AA"), data=b"List-Unsubscribe=One-Click",
                               headers={"Content-Type": "application/x-www-form-urlencoded"}) as resp:  # fmt: skip
        assert resp.status == 404
    assert len(stack.unsubscribed.calls) == 2


async def test_access_log_never_contains_a_full_token(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mtaserver.tracking.access")
    c = codec()
    toks = [c.open_token("Q4", 0), c.click_token("Q4", 0, URL, 0, 1), c.unsubscribe_token("Q4", 0)]
    for kind, tok in zip("ocu", toks, strict=True):
        async with stack.http.get(_path(stack, kind, tok), allow_redirects=False) as resp:
            await resp.read()
    lines = [r.getMessage() for r in caplog.records if r.name == "mtaserver.tracking.access"]
    assert len(lines) == 3
    text = "\n".join(lines)
    for tok in toks:
        assert tok not in text and tok[:12] not in text
        assert tok[:6] in text
    assert redact_path("/c/abcdefghijklmnop?x=1") == "/c/abcdef…"


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("PUT", "/o/{open}.gif", 405, "GET, HEAD"),
        ("POST", "/o/{open}.gif", 405, "GET, HEAD"),
        ("DELETE", "/c/{click}", 405, "GET, HEAD"),
        ("PATCH", "/u/{unsub}", 405, "GET, HEAD, POST"),
        ("GET", "/o/{open}", 404, None),  # the pixel path ends in .gif
        ("GET", "/x/{open}.gif", 404, None),
        ("GET", "/", 404, None),
        ("GET", "/o/%41{open}.gif", 404, None),  # percent-encoding is never ours
    ],
)
async def test_methods_and_paths_outside_the_three_endpoints(
    stack: Stack, method: str, path: str, status: int, allow: str | None
) -> None:
    c = codec()
    url = stack.base + path.format(
        open=c.open_token("Q5", 0),
        click=c.click_token("Q5", 0, URL, 0, 1),
        unsub=c.unsubscribe_token("Q5", 0),
    )
    async with stack.http.request(method, yarl.URL(url, encoded=True),
                                  allow_redirects=False) as resp:  # fmt: skip
        assert resp.status == status
        assert resp.headers.get("Allow") == allow
        assert "Location" not in resp.headers
    await stack.settle()
    assert await stack.events("open") == [] and await stack.events("click") == []


async def test_unsubscribe_post_body_is_bounded(stack: Stack) -> None:
    await stack.message("Q6", ("a@example.org",))
    url = _path(stack, "u", codec().unsubscribe_token("Q6", 0))
    body = b"List-Unsubscribe=One-Click&pad=" + b"x" * 20_000
    async with stack.http.post(
        url, data=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    ) as resp:
        assert resp.status == 413
    assert stack.unsubscribed.calls == []


async def test_unsubscribe_still_works_after_retention_removed_the_message(stack: Stack) -> None:
    await stack.message("Q7", ("a@example.org", "b@example.org"), sender="news@shop.example")
    headers = stack.tracker.unsubscribe_headers("Q7", 1, address="b@example.org",
                                                sender_domain="shop.example")  # fmt: skip
    (url,) = [u for u in re.findall(rb"<([^>]+)>", headers) if u.startswith(b"https://")]
    token = url.decode().rsplit("/", 1)[1]
    old_style = codec().unsubscribe_token("Q7", 0)  # carries no address

    def forget(conn: sqlite3.Connection) -> None:  # what retention's records sweep does
        conn.execute("DELETE FROM recipients WHERE queue_id = 'Q7'")
        conn.execute("DELETE FROM messages WHERE id = 'Q7'")

    await stack.db.write(forget)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    async with stack.http.post(_path(stack, "u", token), data=b"List-Unsubscribe=One-Click",
                               headers=form) as resp:  # fmt: skip
        assert resp.status == 200
    async with stack.http.post(_path(stack, "u", old_style), data=b"List-Unsubscribe=One-Click",
                               headers=form) as resp:  # fmt: skip
        assert resp.status == 404  # nothing says who that was any more
    assert stack.unsubscribed.calls == [("shop.example", "b@example.org", "Q7")]
    assert await stack.unsubscribed.store.check("b@example.org", "shop.example") is not None
    assert await stack.unsubscribed.store.check("a@example.org", "shop.example") is None
    (ev,) = await stack.events("unsubscribe")
    assert ev[:2] == ("Q7", "b@example.org") and ev[2]["idx"] == 1
