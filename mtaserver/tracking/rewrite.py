"""Rewrite the HTML of a message for one recipient: tracked links, open pixel, headers.

A message is parsed once into a ``Template`` (where the HTML parts are, where each
trackable ``href`` value sits, where ``</body>`` is) and then rendered once per recipient
with that recipient's tokens. Only the bodies of ``text/html`` parts change; they are
re-encoded in their own transfer encoding (quoted-printable, base64, 7bit/8bit) and
charset. Every other byte, every header included, is copied from the input, so nothing
the sender wrote is re-serialized (see PITFALLS: CVE-2024-6923).

Left alone: ``mailto:`` and every other non-http(s) scheme, in-page anchors, relative
links, ``<link>``/``<base>`` hrefs, comments (except Outlook conditional comments, whose
links Outlook shows), ``<script>``/``<style>`` contents, and any tag that carries a
``data-mtaserver-notrack`` or ``data-notrack`` attribute.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import html
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mtaserver.tracking.mime import HeaderField, HtmlPart, MimeError, header_fields, html_parts
from mtaserver.tracking.tokens import is_trackable_url

NOTRACK_ATTRIBUTES = frozenset({"data-mtaserver-notrack", "data-notrack"})
_SKIP_TAGS = frozenset({"link", "base"})
_RAW_TEXT = frozenset({"script", "style"})
_SMTP_LINE = 998
_MAX_URL_CHARS = 8000

_TAG_OPEN = re.compile(r"<(!--|!|/?)([A-Za-z][^\s/>]*)?")
_ATTR_NAME = re.compile(r"[^\s\"'>/=]+")
_WS = re.compile(r"[\s/]*")
_URL_NOISE = re.compile(r"[\t\r\n]")
_EQUALS = re.compile(r"\s*=\s*")
_UNQUOTED = re.compile(r"[^\s>]*")


class RewriteError(ValueError):
    """The message cannot be rewritten safely; it is sent untracked instead."""


@dataclass(frozen=True, slots=True)
class _Href:
    """A trackable href: ``text[start:end]`` is ``<ws><name><ws>=<ws><value>``."""

    start: int
    ws_end: int  # end of the whitespace before the attribute name
    value_start: int
    end: int
    link: int  # index into Template.links


@dataclass(frozen=True, slots=True)
class _Part:
    span: HtmlPart
    codec: str  # how the decoded body maps to str: "latin-1" or the charset itself
    text: str
    hrefs: tuple[_Href, ...]
    pixel_at: int  # where the pixel goes (before </body>, else </html>, else the end)
    newline: str
    trailer: bytes  # line breaks after the encoded body, kept as they were
    b64_line: int  # line length of a base64 body


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed message, ready to render per recipient."""

    data: bytes
    header_end: int  # where new header fields are inserted
    headers: tuple[HeaderField, ...]
    parts: tuple[_Part, ...]
    links: tuple[str, ...]  # distinct tracked URLs, in order of first appearance

    @property
    def has_html(self) -> bool:
        return bool(self.parts)


def _ascii_compatible(charset: str | None) -> tuple[bool, str]:
    """Whether HTML markup in this charset is plain ASCII bytes, and the codec to use."""
    if charset is None:
        return True, "utf-8"
    try:
        name = codecs.lookup(charset).name
    except LookupError:
        return True, "utf-8"
    try:
        probe = '<a href="x">'.encode(name)
    except (UnicodeError, LookupError):
        return False, name
    return probe == b'<a href="x">' and name not in ("utf-7",), name


def _decode_body(raw: bytes, encoding: str) -> bytes:
    if encoding == "base64":
        try:
            return binascii.a2b_base64(raw)
        except binascii.Error:
            raise RewriteError("bad base64 body") from None
    if encoding == "quoted-printable":
        return binascii.a2b_qp(raw)
    if encoding in ("7bit", "8bit", "binary"):
        return raw
    raise RewriteError(f"unknown transfer encoding {encoding!r}")


def _clean_url(raw: str, codec: str, charset: str) -> str:
    """The URL a browser would follow for this attribute value."""
    if codec == "latin-1":
        raw = raw.encode("latin-1").decode(charset, errors="replace")
    return _URL_NOISE.sub("", html.unescape(raw)).strip(" \f\x00")


def _scan(text: str, codec: str, charset: str, links: dict[str, int]) -> tuple[list[_Href], int]:
    """Find trackable hrefs and the pixel position in one HTML text."""
    hrefs: list[_Href] = []
    body_close = html_close = -1
    pos = 0
    n = len(text)
    lower = text.lower()  # once: a message may have many <style> blocks
    while True:
        lt = text.find("<", pos)
        if lt < 0:
            break
        m = _TAG_OPEN.match(text, lt)
        if m is None or (not m.group(1) and not m.group(2)):
            pos = lt + 1
            continue
        kind, name = m.group(1), (m.group(2) or "").lower()
        if kind == "!--":
            if text.startswith("<!--[if", lt):
                pos = lt + 4  # conditional comment: Outlook renders what is inside
                continue
            close = text.find("-->", lt + 4)
            pos = n if close < 0 else close + 3
            continue
        if kind == "!":
            close = text.find(">", lt)
            pos = n if close < 0 else close + 1
            continue
        if kind == "/":
            if name == "body":
                body_close = lt
            elif name == "html":
                html_close = lt
            close = text.find(">", m.end())
            pos = n if close < 0 else close + 1
            continue
        pos, attrs = _attributes(text, m.end())
        if name in _RAW_TEXT:
            close = lower.find(f"</{name}", pos)
            pos = n if close < 0 else close
            continue
        if name in _SKIP_TAGS or any(a[0] in NOTRACK_ATTRIBUTES for a in attrs):
            continue
        for a_name, a_start, ws_end, v_start, v_end, value in attrs:
            if a_name != "href":
                continue
            url = _clean_url(value, codec, charset)
            if len(url) <= _MAX_URL_CHARS and is_trackable_url(url):
                link = links.setdefault(url, len(links))
                hrefs.append(_Href(a_start, ws_end, v_start, v_end, link))
            break  # browsers use the first href only
    if body_close >= 0:
        return hrefs, body_close
    return hrefs, html_close if html_close >= 0 else n


_Attr = tuple[str, int, int, int, int, str]  # name, ws start, ws end, value start, end, value


def _attributes(text: str, pos: int) -> tuple[int, list[_Attr]]:
    """Parse attributes of a start tag from ``pos``; returns (position after '>', attrs)."""
    attrs: list[_Attr] = []
    n = len(text)
    while pos < n:
        ws = _WS.match(text, pos)
        ws_start, pos = pos, ws.end() if ws else pos
        if pos >= n:
            break
        if text[pos] == ">":
            return pos + 1, attrs
        nm = _ATTR_NAME.match(text, pos)
        if nm is None:
            pos += 1
            continue
        ws_end = pos
        pos = nm.end()
        name = nm.group(0).lower()
        eq = _EQUALS.match(text, pos)
        if eq is None:
            attrs.append((name, ws_start, ws_end, pos, pos, ""))
            continue
        pos = eq.end()
        if pos < n and text[pos] in "\"'":
            close = text.find(text[pos], pos + 1)
            if close < 0:
                raise RewriteError("unterminated attribute value")
            attrs.append((name, ws_start, ws_end, pos, close + 1, text[pos + 1 : close]))
            pos = close + 1
        else:
            v = _UNQUOTED.match(text, pos)
            v_end = v.end() if v else pos
            attrs.append((name, ws_start, ws_end, pos, v_end, text[pos:v_end]))
            pos = v_end
    return n, attrs


def parse(data: bytes) -> Template:
    """Parse a message once; raises RewriteError when it cannot be rewritten safely."""
    try:
        h_end, _b_start, spans = html_parts(data)
        headers = tuple(header_fields(data, 0, h_end))
    except (MimeError, RecursionError, ValueError) as exc:
        raise RewriteError(str(exc)) from None
    links: dict[str, int] = {}
    parts: list[_Part] = []
    for span in spans:
        raw = data[span.start : span.end]
        stripped = raw.rstrip(b"\r\n")
        trailer = raw[len(stripped) :]
        if span.encoding in ("base64", "quoted-printable"):
            raw = stripped
        else:
            trailer = b""
        decoded = _decode_body(raw, span.encoding)
        compatible, charset = _ascii_compatible(span.charset)
        if not compatible:
            continue  # e.g. UTF-16 HTML: sent untracked rather than risk corrupting it
        text = decoded.decode("latin-1")
        hrefs, pixel_at = _scan(text, "latin-1", charset, links)
        first = raw.split(b"\n", 1)[0].rstrip(b"\r")
        b64_line = len(first) if 4 <= len(first) <= 76 and len(first) % 4 == 0 else 76
        newline = "\r\n" if "\r\n" in text or "\n" not in text else "\n"
        parts.append(
            _Part(span, "latin-1", text, tuple(hrefs), pixel_at, newline, trailer, b64_line)
        )
    return Template(data, h_end, headers, tuple(parts), tuple(links))


def _render_text(part: _Part, urls: Sequence[str], pixel: str | None, wrap: bool) -> str:
    out: list[str] = []
    pos = 0
    text = part.text
    inserts: list[tuple[int, int, str]] = []
    for h in part.hrefs:
        lead = part.newline if wrap else text[h.start : h.ws_end] or " "
        attr = text[h.ws_end : h.value_start]
        inserts.append((h.start, h.end, f'{lead}{attr}"{html.escape(urls[h.link])}"'))
    if pixel is not None:
        lead = part.newline if wrap else ""
        tag = (
            f'{lead}<img src="{html.escape(pixel)}" width="1" height="1" alt="" border="0"'
            ' style="display:block;width:1px;height:1px;border:0;margin:0;padding:0">'
        )
        inserts.append((part.pixel_at, part.pixel_at, tag))
    inserts.sort(key=lambda t: (t[0], t[1]))
    for start, end, new in inserts:
        out.append(text[pos:start])
        out.append(new)
        pos = end
    out.append(text[pos:])
    return "".join(out)


def _longest_line(data: bytes) -> int:
    return max((len(line.rstrip(b"\r")) for line in data.split(b"\n")), default=0)


def _encode(part: _Part, body: bytes) -> bytes:
    enc = part.span.encoding
    if enc == "base64":
        flat = base64.b64encode(body)
        step = part.b64_line
        lines = [flat[i : i + step] for i in range(0, len(flat), step)]
        return b"\r\n".join(lines) + part.trailer
    if enc == "quoted-printable":
        return binascii.b2a_qp(body, quotetabs=False, istext=True, header=False) + part.trailer
    return body


def render_part(part: _Part, urls: Sequence[str], pixel: str | None) -> bytes:
    """One HTML part for one recipient, re-encoded in the part's transfer encoding."""
    body = _render_text(part, urls, pixel, wrap=False).encode(part.codec)
    if part.span.encoding not in ("base64", "quoted-printable"):
        limit = max(_SMTP_LINE, _longest_line(part.text.encode(part.codec)))
        if _longest_line(body) > limit:
            # A long token made a line too long for SMTP: break lines inside the tags.
            body = _render_text(part, urls, pixel, wrap=True).encode(part.codec)
    return _encode(part, body)


def render(
    template: Template,
    url_for: Callable[[int, str], str] | None,
    pixel: str | None,
    add_headers: bytes = b"",
    drop_headers: frozenset[str] = frozenset(),
) -> bytes:
    """Assemble the message for one recipient.

    ``url_for(link, url)`` gives the tracked URL for a link (None: links stay as they are);
    ``pixel`` is the open pixel URL (None: no pixel). ``add_headers`` (complete CRLF-ended
    fields) go at the end of the top-level header block; fields named in ``drop_headers``
    are cut out byte for byte.
    """
    data = template.data
    cuts: list[tuple[int, int, bytes]] = []
    for f in template.headers:
        if f.name in drop_headers:
            cuts.append((f.start, f.end, b""))
    if add_headers:
        cuts.append((template.header_end, template.header_end, add_headers))
    if url_for is not None or pixel is not None:
        urls = [url_for(i, u) if url_for else u for i, u in enumerate(template.links)]
        for part in template.parts:
            cuts.append((part.span.start, part.span.end, render_part(part, urls, pixel)))
    cuts.sort(key=lambda t: (t[0], t[1]))
    out: list[bytes] = []
    pos = 0
    for start, end, new in cuts:
        out.append(data[pos:start])
        out.append(new)
        pos = end
    out.append(data[pos:])
    return b"".join(out)
