"""Marketing mail for one contact at a time: merge data, compose, prepare, commit.

Triggered steps (``triggers``) and campaigns both send through :class:`OutreachSender`:
it renders a stored template for one contact, refuses contacts without consent, records
suppressed recipients, prepares through the same pipeline as SMTP and commits the
messages together with the caller's own bookkeeping in one transaction.
"""

from mtaserver.outreach.merge import (
    LinkBuilder,
    Links,
    MergeInput,
    merge_data,
    no_links,
)
from mtaserver.outreach.send import Outgoing, OutreachSender, Resolved, Sender, Skipped

__all__ = [
    "LinkBuilder",
    "Links",
    "MergeInput",
    "Outgoing",
    "OutreachSender",
    "Resolved",
    "Sender",
    "Skipped",
    "merge_data",
    "no_links",
]
