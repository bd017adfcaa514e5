"""Webhooks: events POSTed to configured URLs from a durable outbox, at least once, in order.

``dispatch`` is the service (outbox → signed POSTs, retries, per-message order); ``sendgrid``
turns events into SendGrid's Event Webhook and signs them as SendGrid does.
"""

from mtaserver.webhooks.dispatch import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    WebhookDispatcher,
    backoff,
    sign,
    verify,
)

__all__ = [
    "EVENT_ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookDispatcher",
    "backoff",
    "sign",
    "verify",
]
