"""The preferences page on the tracking host: a person's lists, and unsubscribe from all.

``GET /p/{token}`` lists every list of the token's owner with a checkbox (ticked where the
person is subscribed) and two buttons; ``POST`` applies the form: ``action=save`` keeps
exactly the ticked lists, ``action=unsubscribe_all`` unsubscribes the address from all of
the owner's mail (consent and suppression change together, see the backend). The signed
token in the path is the only credential, and only a POST changes anything (no cookies, so
no cross-site request can act for someone else: a forger would need the token itself;
no JavaScript). ``preferences_url`` builds the link merge code puts into mail as
``{{preferences_url}}``.

:class:`ConsentPages` serves this page and the double opt-in confirm page
(:mod:`mtaserver.tracking.confirm`) for the tracking endpoint.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from mtaserver.clock import Clock
from mtaserver.errors import StorageError
from mtaserver.log import get_logger, kv
from mtaserver.tracking.confirm import Confirmer, handle_confirm, page
from mtaserver.tracking.consent_tokens import (
    PREFERENCES,
    ConsentTokens,
    preferences_url,
)
from mtaserver.tracking.tokens import TokenCodec, TokenError

__all__ = ["ConsentBackend", "ConsentPages", "ListChoice", "Preferences", "preferences_url"]
log = get_logger("tracking")
_MAX_LISTS = 500


@dataclass(frozen=True, slots=True)
class ListChoice:
    name: str
    subscribed: bool


@dataclass(frozen=True, slots=True)
class Preferences:
    address: str
    unsubscribed: bool  # the contact's own consent
    lists: tuple[ListChoice, ...]


class ConsentBackend(Confirmer, Protocol):
    async def preferences(self, owner: str, address: str) -> Preferences | None: ...

    async def save(self, owner: str, address: str, wanted: Sequence[str], ip: str) -> bool: ...

    async def unsubscribe_all(self, owner: str, address: str, ip: str) -> bool: ...


def render(p: Preferences, message: str = "") -> str:
    rows = "\n".join(
        f'<label><input type="checkbox" name="list" value="{html.escape(c.name)}"'
        f"{' checked' if c.subscribed else ''}> {html.escape(c.name)}</label>"
        for c in p.lists
    )
    note = f"<p><b>{html.escape(message)}</b></p>" if message else ""
    state = "<p>This address is unsubscribed from all mail.</p>" if p.unsubscribed else ""
    return (
        f"{note}<p>Mail to <b>{html.escape(p.address)}</b>.</p>{state}"
        '<form method="post" action="">'
        f"{rows or '<p>(no lists)</p>'}"
        '<p><button type="submit" name="action" value="save">Save</button></p>'
        '<p><button type="submit" name="action" value="unsubscribe_all">'
        "Unsubscribe from all</button></p></form>"
    )


class ConsentPages:
    """``/s/{token}`` (confirm) and ``/p/{token}`` (preferences) for :class:`TrackingWeb`."""

    def __init__(self, codec: TokenCodec | bytes, backend: ConsentBackend, clock: Clock) -> None:
        self.tokens = ConsentTokens(codec)
        self.backend = backend
        self.clock = clock

    async def handle(self, request: web.BaseRequest, path: str, ip: str) -> web.Response:
        token = path[3:]
        try:
            if path.startswith("/s/"):
                return await handle_confirm(
                    request, token, self.tokens, self.backend, self.clock.now(), ip
                )
            return await self.preferences(request, token, ip)
        except StorageError as exc:
            log.error(kv(event="consent_page_failed", error=str(exc)))
            return web.Response(status=503, text="try again later\n", headers={"Retry-After": "60"})

    async def preferences(self, request: web.BaseRequest, token: str, ip: str) -> web.Response:
        try:
            data = self.tokens.verify(token, PREFERENCES)
        except TokenError:
            return page("Not found", "<p>This link is not valid.</p>", 404)
        owner, address = data.owner, data.address
        message = ""
        if request.method == "POST":
            try:
                form = await request.post()
            except (ValueError, web.HTTPException):
                return web.Response(status=400, text="bad request\n")
            action = form.get("action")
            if action == "unsubscribe_all":
                await self.backend.unsubscribe_all(owner, address, ip)
                log.info(kv(event="preferences_unsubscribe_all", owner=owner))
                message = "You are unsubscribed from all mail."
            elif action == "save":
                wanted = [str(v) for v in form.getall("list", [])][:_MAX_LISTS]
                if not await self.backend.save(owner, address, wanted, ip):
                    return page("Not found", "<p>This address is no longer on file.</p>", 404)
                log.info(kv(event="preferences_saved", owner=owner, lists=len(wanted)))
                message = "Your choices are saved."
            else:
                return web.Response(status=400, text="expected action=save|unsubscribe_all\n")
        prefs = await self.backend.preferences(owner, address)
        if prefs is None:
            return page("Not found", "<p>This address is no longer on file.</p>", 404)
        return page("Email preferences", render(prefs, message))
