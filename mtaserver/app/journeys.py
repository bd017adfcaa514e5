"""The marketing send primitive and the trigger runner, wired into the daemon.

:func:`link_builder` is the one place the per-recipient ``unsubscribe_url`` and
``preferences_url`` of marketing mail are made (from the tracking host's token codec);
:func:`outreach_sender` builds the :class:`~mtaserver.outreach.OutreachSender` that
triggers and campaigns share, over the same pipeline, suppression list and queue as the
HTTP send API.
"""

from __future__ import annotations

from mtaserver.app.api import _pipeline
from mtaserver.app.mail import MailParts
from mtaserver.config import Config
from mtaserver.outreach import LinkBuilder, Links, OutreachSender, no_links
from mtaserver.storage.sqlite.queue import new_queue_id
from mtaserver.storage.sqlite.templates import TemplateStore
from mtaserver.tracking.tracker import Tracker


def link_builder(tracker: Tracker | None) -> LinkBuilder:
    """Per-recipient links from the tracking host; empty strings without one.

    The recipient's index is 0: marketing mail has one recipient per message. Until the
    preferences page exists, ``preferences_url`` is the unsubscribe page (which lets the
    person unsubscribe, the one preference there is).
    """
    if tracker is None:
        return no_links
    t = tracker

    def build(queue_id: str, address: str, sender_domain: str) -> Links:
        url = t.unsubscribe_url(queue_id, 0, address, sender_domain)
        return Links(unsubscribe_url=url, preferences_url=url)

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
