"""The pure core of the SendGrid v3 compatible HTTP send API.

``payload.parse_mail_send`` validates a decoded ``POST /v3/mail/send`` body into a frozen
``MailRequest`` (or SendGrid-shaped errors); ``compose.compose`` renders it into one RFC
5322 message per personalization. No HTTP, no storage: the API service wires these in.
"""

from mtaserver.sendapi.compose import (
    ComposedMessage,
    ComposeOutcome,
    Composition,
    StoredTemplate,
    compose,
)
from mtaserver.sendapi.model import ApiError, Limits, MailRequest, ParseOutcome
from mtaserver.sendapi.payload import parse_mail_send, too_large

__all__ = [
    "ApiError",
    "ComposeOutcome",
    "ComposedMessage",
    "Composition",
    "Limits",
    "MailRequest",
    "ParseOutcome",
    "StoredTemplate",
    "compose",
    "parse_mail_send",
    "too_large",
]
