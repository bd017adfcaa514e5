"""SendGrid-shaped answers: ``{"errors": [{"message", "field", "help"}]}`` with its status.

The messages for 401/403/413/429 are SendGrid's own, so client code that matches on them
keeps working.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from mtaserver.sendapi import ApiError

UNAUTHORIZED = "The provided authorization grant is invalid, expired, or revoked"
AUTH_REQUIRED = "authorization required"
FORBIDDEN = "access forbidden"
TOO_MANY = "too many requests"
SENDER_IDENTITY = (
    "The from address does not match a verified Sender Identity. Mail cannot be sent until "
    "this error is resolved. Visit https://sendgrid.com/docs/for-developers/sending-email/"
    "sender-identity/ to see the Sender Identity requirements"
)


@dataclass(frozen=True, slots=True)
class Answer:
    """An HTTP answer: status, JSON body (or empty) and extra headers."""

    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = field(default=())


def errors_body(errors: tuple[ApiError, ...] | list[ApiError]) -> bytes:
    return json.dumps({"errors": [e.as_json() for e in errors]}).encode()


def error(status: int, message: str, field_name: str | None = None) -> Answer:
    return Answer(status, errors_body([ApiError(message, field_name, None)]))


def errors(status: int, errs: tuple[ApiError, ...] | list[ApiError]) -> Answer:
    return Answer(status, errors_body(errs))


def json_answer(value: object, status: int = 200) -> Answer:
    return Answer(status, json.dumps(value).encode())
