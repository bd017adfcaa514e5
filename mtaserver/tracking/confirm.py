"""Double opt-in: the confirmation mail's content, and the confirm page of its link.

``GET /s/{token}`` shows a page with one button; only its ``POST`` confirms, because mail
security scanners fetch every link in a message (a GET that confirmed would confirm for
them). The token (:mod:`mtaserver.tracking.consent_tokens`) names the owner, the list and
the address, and expires after ``CONFIRM_MAX_AGE``; an expired or tampered one gets a page
that says so, with status 404 (410 when only expired), and changes nothing. The confirm
records the consent proof: source ``confirm``, the time and the client IP.

The mail is plain text: the list's own subject and body (``{{confirm_url}}``, ``{{list}}``
and ``{{email}}`` substituted) or the built-in ones, with ``X-Mtaserver-Track: none`` so
the link is not rewritten into a click redirect and no pixel or unsubscribe link is added.
"""

from __future__ import annotations

import html
from email.message import EmailMessage
from email.policy import SMTP
from typing import Final, Protocol

from aiohttp import web

from mtaserver.tracking.consent_tokens import CONFIRM, CONFIRM_MAX_AGE, ConsentTokens
from mtaserver.tracking.tokens import TokenError

DEFAULT_SUBJECT: Final = "Please confirm your subscription to {{list}}"
DEFAULT_BODY: Final = (
    "Hello,\n\n"
    "someone (hopefully you) asked to subscribe {{email}} to {{list}}.\n"
    "To confirm, open this link and press the button:\n\n"
    "{{confirm_url}}\n\n"
    "The link is valid for 7 days. If you did not ask for this, ignore this mail:\n"
    "you will not be subscribed and will not hear from us again.\n"
)
MAX_FORM: Final = 4096

PAGE: Final = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow"><title>{title}</title>
<style>body{{font:16px/1.5 system-ui,sans-serif;max-width:32em;margin:4em auto;padding:0 1em}}
button{{font:inherit;padding:.5em 1.5em}}label{{display:block;margin:.3em 0}}</style></head>
<body><h1>{title}</h1>{body}</body></html>
"""
PAGE_HEADERS: Final = {
    "Server": "mtaserver",
    "Cache-Control": "no-store, max-age=0",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "form-action 'self'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}


class Confirmer(Protocol):
    async def confirm(self, owner: str, list_name: str, address: str, ip: str) -> bool: ...


def fill(text: str, confirm_url: str, list_name: str, email: str) -> str:
    return (
        text.replace("{{confirm_url}}", confirm_url)
        .replace("{{list}}", list_name)
        .replace("{{email}}", email)
    )


def confirm_message(
    *, from_address: str, to: str, list_name: str, confirm_url: str,
    subject: str | None = None, body: str | None = None,
) -> bytes:  # fmt: skip
    """The confirmation mail (CRLF, no Date/Message-ID: cleanup adds them)."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = from_address
    msg["To"] = to
    msg["Subject"] = fill(subject or DEFAULT_SUBJECT, confirm_url, list_name, to)
    msg["Auto-Submitted"] = "auto-generated"
    msg["X-Mtaserver-Track"] = "none"
    msg.set_content(fill(body or DEFAULT_BODY, confirm_url, list_name, to), cte="quoted-printable")
    return msg.as_bytes()


def page(title: str, body: str, status: int = 200) -> web.Response:
    return web.Response(
        status=status, text=PAGE.format(title=html.escape(title), body=body),
        content_type="text/html", headers=PAGE_HEADERS,
    )  # fmt: skip


def refused(expired: bool) -> web.Response:
    if expired:
        return page("Link expired", "<p>This confirmation link has expired. Subscribe again "
                    "to get a new one.</p>", 410)  # fmt: skip
    return page("Not found", "<p>This link is not valid.</p>", 404)


async def handle_confirm(
    request: web.BaseRequest, token: str, tokens: ConsentTokens, confirmer: Confirmer,
    now: float, ip: str,
) -> web.Response:  # fmt: skip
    """``/s/{token}``: GET (and HEAD) shows the button, POST confirms."""
    try:
        data = tokens.verify(token, CONFIRM, now, CONFIRM_MAX_AGE)
    except TokenError as exc:
        return refused("expired" in str(exc))
    name = html.escape(data.list_name)
    if request.method != "POST":
        return page(
            "Confirm your subscription",
            f"<p>Subscribe <b>{html.escape(data.address)}</b> to <b>{name}</b>?</p>\n"
            '<form method="post" action=""><input type="hidden" name="confirm" value="yes">'
            '<button type="submit">Confirm</button></form>',
        )
    try:
        form = await request.post()
    except (ValueError, web.HTTPException):
        return web.Response(status=400, text="bad request\n")
    if form.get("confirm") != "yes":
        return web.Response(status=400, text="expected confirm=yes\n")
    if not await confirmer.confirm(data.owner, data.list_name, data.address, ip):
        return page("Nothing to confirm", f"<p>This address is not waiting for a confirmation "
                    f"on {name} (already confirmed, or no longer on the list).</p>")  # fmt: skip
    return page("Subscribed", f"<p>Thank you: you are subscribed to <b>{name}</b>.</p>")
