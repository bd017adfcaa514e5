"""The durable queue: the only writer of the ``messages`` and ``recipients`` tables.

``spool`` takes mail in, leases it to delivery and records outcomes; ``operator`` holds the
CLI's and admin API's operations; ``maintenance`` the metrics gauges, retention's deletes
and the privacy erase. :class:`Spool` is all three, over one database.
"""

from mtaserver.storage.sqlite.queue.spool import Spool
from mtaserver.storage.sqlite.queue.values import (
    BodyCodec,
    IdentityCodec,
    MessageInfo,
    QueueEntry,
    QueueSummary,
    RecipientInfo,
    domain_of,
    new_queue_id,
)

__all__ = [
    "BodyCodec",
    "IdentityCodec",
    "MessageInfo",
    "QueueEntry",
    "QueueSummary",
    "RecipientInfo",
    "Spool",
    "domain_of",
    "new_queue_id",
]
