"""The durable queue: the only writer of the ``messages``, ``recipients`` and ``batches`` tables.

``spool`` takes mail in (``intake``), leases it to delivery and records outcomes;
``operator`` holds the CLI's and admin API's operations; ``batches`` the send batches of
the HTTP API; ``maintenance`` the metrics gauges, retention's deletes and the privacy
erase. :class:`Spool` is all of them, over one database.
"""

from mtaserver.storage.sqlite.queue.batches import BatchChange, BatchInfo
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
    "BatchChange",
    "BatchInfo",
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
