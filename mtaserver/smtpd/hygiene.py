"""Input hygiene for SMTP listeners: command arguments and DATA, which aiosmtpd lets through.

aiosmtpd keeps bare CR, bare LF and NUL inside stored DATA and hands control characters in
MAIL/RCPT/EHLO arguments to the handler (PITFALLS). Every listener reads DATA with
:func:`read_data` — only ``<CRLF>.<CRLF>`` ends it, the size is enforced while reading — and
cleans it with :func:`clean_data`; every argument passes :func:`bad_argument`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

END = b"\r\n.\r\n"  # end of DATA; the first CRLF may be the one that ended the DATA command
SIZE_EXCEEDED = "552 5.3.4 Message size exceeds fixed maximum message size"


def bad_argument(arg: str) -> str | None:
    """Why a command argument is unacceptable (control characters, invalid UTF-8), or None.

    aiosmtpd decodes arguments with ``surrogateescape``, so invalid UTF-8 shows up as lone
    surrogates.
    """
    for ch in arg:
        o = ord(ch)
        if o < 0x20 or o == 0x7F:
            return "control character in command"
        if 0xD800 <= o <= 0xDFFF:
            return "invalid UTF-8 in command"
    return None


def has_source_route(arg: str, keyword: str) -> bool:
    """``MAIL FROM:<@a,@b:user@c>``: aiosmtpd would silently drop the route."""
    text = arg.strip()
    if text[: len(keyword)].upper() == keyword:
        text = text[len(keyword) :].strip()
    if text.startswith("<"):
        text = text[1:].lstrip()
    return text.startswith("@")


def _partial(tail: bytes) -> int:
    """Length of the longest suffix of ``tail`` that is a proper prefix of :data:`END`."""
    for k in (4, 3, 2, 1):
        if tail.endswith(END[:k]):
            return k
    return 0


async def read_data(
    reader: asyncio.StreamReader, limit: int, progress: Callable[[], None]
) -> tuple[bytes, bool]:
    """Read DATA up to and including ``<CRLF>.<CRLF>``; return (wire content, too big).

    The content keeps its dot-stuffing and the CRLF that ends its last line. Nothing past
    the terminator is read, so pipelined commands stay in ``reader`` for the session. The
    stream is searched for the terminator in large chunks (C speed); when the bytes already
    read end with part of it (always at the start: the DATA line's CRLF counts), just enough
    bytes are read to tell whether it completes. Beyond ``limit`` bytes the rest is read and
    dropped. ``progress`` is called after every read (the idle timer counts it as activity).
    """
    chunks: list[bytes] = []
    size = 0
    over = False
    tail = b"\r\n"  # the last bytes read (up to 4), starting with the DATA command's CRLF
    while True:
        k = _partial(tail)
        try:
            if k:
                piece = await reader.readexactly(len(END) - k)
                done = piece == END[k:]
            else:
                try:
                    piece = await reader.readuntil(END)
                    done = True
                except asyncio.LimitOverrunError as exc:
                    piece = await reader.read(exc.consumed)
                    done = False
        except asyncio.IncompleteReadError:
            raise ConnectionResetError("connection closed during DATA") from None
        progress()
        size += len(piece)
        if not over:
            chunks.append(piece)
            if size > limit:
                over = True
                chunks.clear()
        if done:
            break
        tail = (tail + piece)[-4:]
    if over:
        return b"", True
    content = b"".join(chunks)
    return content[:-3], False


def clean_data(raw: bytes, *, normalize: bool) -> tuple[bytes, str | None]:
    """Dot-unstuff wire content and enforce line-end hygiene; (content, problem or None).

    NUL and bare CR are refused; bare LF becomes CRLF (or is refused when ``normalize`` is
    off); lines over 998 octets are refused. The result has CRLF line ends only.
    """
    if b"\x00" in raw:
        return b"", "550 5.6.0 NUL character in message content"
    crlf = raw.count(b"\r\n")
    if raw.count(b"\r") != crlf:
        return b"", "550 5.6.0 Bare CR in message content; use CRLF line ends"
    if raw.startswith(b"."):
        raw = raw[1:]
    raw = raw.replace(b"\r\n.", b"\r\n")
    if raw.count(b"\n") != crlf:
        if not normalize:
            return b"", "550 5.6.0 Bare LF in message content; use CRLF line ends"
        raw = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if len(raw) > 1000 and max(map(len, raw.split(b"\r\n"))) > 998:
        return b"", "550 5.6.0 Line too long (RFC 5322 allows 998 octets)"
    return raw, None
