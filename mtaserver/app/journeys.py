"""The marketing send primitive and the trigger runner, wired into the daemon.

:func:`link_builder` is the one place the per-recipient ``unsubscribe_url`` and
``preferences_url`` of marketing mail are made (from the tracking host's token codec);
:func:`outreach_sender` builds the :class:`~mtaserver.outreach.OutreachSender` that
triggers and campaigns share, over the same pipeline, suppression list and queue as the
HTTP send API.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mtaserver.app.api import _pipeline
from mtaserver.app.mail import MailParts
from mtaserver.app.service import Service, SimpleService
from mtaserver.config import Config
from mtaserver.log import get_logger, kv
from mtaserver.outreach import LinkBuilder, Links, OutreachSender, no_links
from mtaserver.outreach.runner import StepRunner
from mtaserver.storage.sqlite.journeys import JourneyStore
from mtaserver.storage.sqlite.queue import new_queue_id
from mtaserver.storage.sqlite.templates import TemplateStore

if TYPE_CHECKING:
    from mtaserver.tracking.tracker import Tracker

log = get_logger("journeys")


def link_builder(tracker: Tracker | None) -> LinkBuilder:
    """Per-recipient links from the tracking host; empty strings without one.

    The recipient's index is 0: marketing mail has one recipient per message. The
    preferences page (lists and unsubscribe-from-all) is signed for the owner and address,
    so one link works for every mail that owner sends the person.
    """
    if tracker is None:
        return no_links
    from mtaserver.tracking.preferences import preferences_url  # aiohttp: with tracking only

    t = tracker

    def build(queue_id: str, owner: str, address: str, sender_domain: str) -> Links:
        return Links(
            unsubscribe_url=t.unsubscribe_url(queue_id, 0, address, sender_domain),
            preferences_url=preferences_url(t.codec, t.base_url, owner, address),
        )

    return build


def outreach_sender(cfg: Config, parts: MailParts) -> OutreachSender:
    """The sender over this config's pipeline (cleanup → tracking → DKIM).

    Built once per config: after SIGHUP build a new one (it holds no state but a
    template cache).
    """
    pipeline = _pipeline(cfg, parts)
    return OutreachSender(
        templates=TemplateStore(parts.spool.db, parts.clock),
        users=parts.users,
        suppressions=parts.suppressions,
        preparer=lambda: pipeline,
        queue=parts.spool,
        clock=parts.clock,
        new_queue_id=new_queue_id,
        hostname=cfg.server.hostname,
        links=link_builder(parts.tracker),
    )


def journeys_service(cfg: Config, parts: MailParts) -> Service:
    """The trigger step runner: fires due steps through the pipeline in force.

    Runs in the main process only (workers never see it), so each step has one runner; on
    SIGHUP the next batch uses the new config's pipeline.
    """
    store = JourneyStore(parts.spool.db, parts.clock)
    runner = StepRunner(store, outreach_sender(cfg, parts), parts.clock)

    async def run() -> None:
        pending = await store.next_due()
        log.info(kv(event="journeys_started", next_due=pending))
        await runner.run()

    async def reload(new: Config) -> None:
        runner.sender = outreach_sender(new, parts)

    return SimpleService("journeys", on_run=run, on_reload=reload)
