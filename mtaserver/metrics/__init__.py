"""Prometheus metrics: the :class:`Metrics` registry (``core``), what it reads
(``ports``), the shaper's scrape-time families (``families``) and the attempt timer
(``timed``)."""

from mtaserver.metrics.core import OTHER, Metrics
from mtaserver.metrics.ports import (
    Agent,
    BacklogRow,
    EventTail,
    QueueGaugeSource,
    ShapingView,
    SmtpObserver,
    WebhookBacklog,
)
from mtaserver.metrics.timed import TimedAgent

__all__ = [
    "OTHER",
    "Agent",
    "BacklogRow",
    "EventTail",
    "Metrics",
    "QueueGaugeSource",
    "ShapingView",
    "SmtpObserver",
    "TimedAgent",
    "WebhookBacklog",
]
