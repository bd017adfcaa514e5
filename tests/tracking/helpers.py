"""Helpers for reading tracked messages back in tests (parsing only, never re-serializing)."""

from __future__ import annotations

import email
import email.policy
import re
from email.message import EmailMessage
from html.parser import HTMLParser

from mtaserver.tracking.tokens import TokenCodec

SECRET = b"test-secret-0123456789abcdef0123456789"


def codec() -> TokenCodec:
    return TokenCodec((SECRET,))


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.hrefs: list[str] = []
        self.imgs: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("script", "style"):
            self._skip += 1
        a = dict(attrs)
        if "href" in a and a["href"] is not None:
            self.hrefs.append(a["href"])
        if tag == "img" and a.get("src"):
            self.imgs.append(a["src"] or "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.chunks.append(data)


def html_view(html: str) -> tuple[str, list[str], list[str]]:
    """(visible text with whitespace collapsed, hrefs, img srcs) as a browser would see."""
    p = _Text()
    p.feed(html)
    p.close()
    return re.sub(r"\s+", " ", "".join(p.chunks)).strip(), p.hrefs, p.imgs


def parse(data: bytes) -> EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    return msg


def html_bodies(data: bytes) -> list[str]:
    out = []
    for part in parse(data).walk():
        if (
            part.get_content_type() == "text/html"
            and part.get_content_disposition() != "attachment"
        ):
            out.append(part.get_content())
    return out


def header_block(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[0] + b"\r\n"
