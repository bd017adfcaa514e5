"""Double opt-in and the preferences page, wired: the consent backend the tracking host's
pages call, and the confirmation mailer as a service.

Both need ``[tracking] base_url`` and its secret (the links are signed with it); the pages
need ``[tracking] listen``. Unsubscribe-from-all goes through the suppression store, one
entry per sending domain of the owner, each committed with the contacts' consent change
(``consent="unsubscribe"``: the suppression → consent path), then every membership is
marked unsubscribed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from mtaserver.app.api import _pipeline
from mtaserver.app.mail import MailParts
from mtaserver.app.service import Service, SimpleService
from mtaserver.clock import Clock
from mtaserver.config import Config
from mtaserver.storage.sqlite.contacts import ContactStore
from mtaserver.storage.sqlite.optin import OptInStore
from mtaserver.storage.sqlite.queue import new_queue_id
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.storage.sqlite.users import UserStore

if TYPE_CHECKING:  # the pages and the mailer (aiohttp) load in their builders, with tracking
    from mtaserver.tracking.optin import OptInMailer
    from mtaserver.tracking.preferences import ConsentPages, Preferences
    from mtaserver.tracking.tokens import TokenCodec


class ContactConsent:
    """:class:`~mtaserver.tracking.preferences.ConsentBackend` over the stores."""

    def __init__(
        self, contacts: ContactStore, suppressions: SuppressionStore, users: UserStore
    ) -> None:
        self.contacts, self.suppressions, self.users = contacts, suppressions, users

    async def confirm(self, owner: str, list_name: str, address: str, ip: str) -> bool:
        return await self.contacts.confirm_member(owner, list_name, address, ip or None)

    async def preferences(self, owner: str, address: str) -> Preferences | None:
        from mtaserver.tracking.preferences import ListChoice, Preferences  # loaded by the pages

        c = await self.contacts.get(owner, address)
        if c is None:
            return None
        on = {m.list_name for m in c.lists if m.status == "subscribed"}
        lists = tuple(ListChoice(x.name, x.name in on) for x in await self.contacts.lists(owner))
        return Preferences(c.address, c.consent_status == "unsubscribed", lists)

    async def save(self, owner: str, address: str, wanted: Sequence[str], ip: str) -> bool:
        return await self.contacts.set_preferences(owner, address, wanted, ip or None) is not None

    async def unsubscribe_all(self, owner: str, address: str, ip: str) -> bool:
        found = await self.users.lookup(owner)
        for domain in sorted(found[0].domains) if found else ():
            await self.suppressions.add(address, "unsubscribe", scope=domain,
                                        source="preferences", consent="unsubscribe")  # fmt: skip
        await self.contacts.leave_all_lists(owner, address)
        return True


def consent_pages(
    codec: TokenCodec, contacts: ContactStore, suppressions: SuppressionStore, users: UserStore,
    clock: Clock,
) -> ConsentPages:  # fmt: skip
    from mtaserver.tracking.preferences import ConsentPages  # aiohttp: [tracking] listen only

    return ConsentPages(codec, ContactConsent(contacts, suppressions, users), clock)


def optin_service(cfg: Config, parts: MailParts, codec: TokenCodec) -> tuple[Service, OptInMailer]:
    """The mailer (and its ``nudge`` for the API) when tracking links can be signed."""
    assert cfg.tracking.base_url is not None
    from mtaserver.tracking.consent_tokens import ConsentTokens  # with tracking only
    from mtaserver.tracking.optin import OptInMailer

    current = [_pipeline(cfg, parts)]
    mailer = OptInMailer(
        OptInStore(parts.spool.db), ConsentTokens(codec), cfg.tracking.base_url, parts.users,
        lambda: current[0], parts.spool, new_queue_id, parts.clock,
    )  # fmt: skip

    async def reload(new: Config) -> None:
        current[0] = _pipeline(new, parts)

    return SimpleService("optin", on_run=mailer.run, on_reload=reload), mailer
