"""The body parts of a SendGrid request: ``content[]``, ``attachments[]``, ``categories``.

Each function records SendGrid's error for a bad entry on the ``Checker`` and returns what
was valid, plus (for content and attachments) the bytes it counts toward the size limit.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

from mtaserver.sendapi.checks import Checker, one_line
from mtaserver.sendapi.model import Attachment, Content, Limits

_CONTENT_REQUIRED: Final = (
    "Unless a valid template_id is provided, the content parameter is required. There must "
    "be at least one defined content block. We typically suggest both text/plain and "
    "text/html blocks are included, but only one block is required."
)
_CONTENT_ORDER: Final = (
    "Following RFC 1341, section 7.2, if either text/html or text/plain are to be sent in your "
    "email: text/plain needs to be first, followed by text/html, followed by any other content."
)


def parse_categories(c: Checker, value: object, lim: Limits) -> tuple[str, ...]:
    """``categories``: at most ``max_categories`` unique ASCII strings."""
    if value is None:
        return ()
    items = c.array(value, "categories")
    if items is None:
        return ()
    if len(items) > lim.max_categories:
        c.error(
            f"There is a limit of {lim.max_categories} categories for each email that is "
            f"sent. You provided {len(items)} categories.",
            "categories",
        )
        return ()
    if not all(isinstance(x, str) for x in items):
        c.error("Categories must be an array of strings.", "categories")
        return ()
    out: list[str] = []
    for cat in items:
        assert isinstance(cat, str)
        if len(cat) > lim.max_category_chars:
            c.error(
                f"Each category must not be longer than {lim.max_category_chars} characters. "
                f"{cat[:40]} exceeds this limit",
                "categories",
            )
        elif not cat.isascii():
            c.error("Categories can not contain non-ASCII characters.", "categories")
        elif cat in out:
            c.error(
                "The categories must be a unique list, and you have included "
                f"{cat} more than once.",
                "categories",
            )
        else:
            out.append(one_line(cat))
    return tuple(out)


def parse_content(c: Checker, value: object, required: bool) -> tuple[tuple[Content, ...], int]:
    """``content[]`` in SendGrid's order (text/plain, text/html, others), and its size."""
    size = 0
    if value is None or value == []:
        if required:
            c.error(_CONTENT_REQUIRED, "content")
        return (), size
    items = c.array(value, "content")
    if items is None:
        return (), size
    out: list[Content] = []
    for i, item in enumerate(items):
        d = c.obj(item, f"content.{i}")
        if d is None:
            continue
        c.note_unknown(d, ("type", "value"), "content.")
        ctype, text = d.get("type"), d.get("value")
        if not isinstance(ctype, str) or not ctype:
            c.error(
                "Your content type must be a string with length of at least one character.",
                f"content.{i}.type",
            )
            continue
        if any(ch in ctype for ch in ";,\r\n") or "/" not in ctype:
            c.error("Cannot contain ';', or CRLF characters.", f"content.{i}.type")
            continue
        if text is None:
            c.error(
                "A content value is required, this is the content of the email you are sending.",
                f"content.{i}.value",
            )
            continue
        if not isinstance(text, str) or not text:
            c.error(
                "The content value must be a string at least one character in length.",
                f"content.{i}.value",
            )
            continue
        size += len(text.encode("utf-8", "surrogatepass"))
        out.append(Content(ctype.strip().lower(), text))
    types = [x.type for x in out]
    for once in ("text/plain", "text/html"):
        if types.count(once) > 1:
            c.error("If present, text/plain and text/html may only be provided once.", "content")
            return (), size
    ranks = [0 if t == "text/plain" else 1 if t == "text/html" else 2 for t in types]
    if ranks != sorted(ranks):
        c.error(_CONTENT_ORDER, "content")
    return tuple(out), size


def parse_attachments(c: Checker, value: object, lim: Limits) -> tuple[tuple[Attachment, ...], int]:
    """``attachments[]`` decoded, and the size of their base64 text."""
    size = 0
    if value is None:
        return (), size
    items = c.array(value, "attachments")
    if items is None:
        return (), size
    if len(items) > lim.max_attachments:
        c.error(f"There is a limit of {lim.max_attachments} attachments.", "attachments")
        return (), size
    out = []
    for i, item in enumerate(items):
        d = c.obj(item, f"attachments.{i}")
        if d is not None:
            c.note_unknown(
                d, ("content", "type", "filename", "disposition", "content_id"), "attachments."
            )
            att, n = _attachment(c, d, f"attachments.{i}")
            size += n
            if att is not None:
                out.append(att)
    return tuple(out), size


def _attachment(c: Checker, d: dict[str, object], at: str) -> tuple[Attachment | None, int]:
    size = 0
    errors = len(c.errors)
    raw = d.get("content")
    data = b""
    if not isinstance(raw, str) or not raw:
        c.error(
            "The attachment content must be a string at least one character in length.",
            f"{at}.content",
        )
    else:
        size += len(raw)
        try:
            data = base64.b64decode("".join(raw.split()), validate=True)
        except (binascii.Error, ValueError):
            c.error("The attachment content must be base64 encoded.", f"{at}.content")
    filename = d.get("filename")
    if filename is None or filename == "":
        c.error("filename is required.", f"{at}.filename")
    elif not isinstance(filename, str):
        c.error("The filename of your attachment must be a string.", f"{at}.filename")
    elif any(ch in filename for ch in "\r\n\0"):
        c.error("The filename of your attachment cannot contain CRLF characters.", f"{at}.filename")
    ctype = d.get("type")
    if ctype is not None:
        if not isinstance(ctype, str) or not ctype:
            c.error(
                "The attachment type must be a string and at least one character in length.",
                f"{at}.type",
            )
        elif any(ch in ctype for ch in ";\r\n") or "/" not in ctype:
            c.error("The type cannot contain ';', or CRLF characters.", f"{at}.type")
    disposition = d.get("disposition", "attachment")
    if disposition not in ("attachment", "inline"):
        c.error(
            'The disposition of your attachment can be either "inline" or "attachment". '
            f"You provided {disposition}.",
            f"{at}.disposition",
        )
    cid = d.get("content_id")
    if cid is not None and not isinstance(cid, str):
        c.error(
            f"The content ID of your attachment must be a string. You provided {cid}.",
            f"{at}.content_id",
        )
    elif isinstance(cid, str) and any(ch in cid for ch in "\r\n\0<>"):
        c.error(
            "The content ID of your attachment cannot contain CRLF characters.",
            f"{at}.content_id",
        )
    elif disposition == "inline" and not cid:
        c.error(
            "The content_id parameter is required if the disposition is inline.",
            f"{at}.content_id",
        )
    if len(c.errors) != errors:
        return None, size
    attachment = Attachment(
        content=data,
        filename=str(filename),
        type=ctype if isinstance(ctype, str) else None,
        disposition=str(disposition),
        content_id=cid if isinstance(cid, str) and cid else None,
    )
    return attachment, size
