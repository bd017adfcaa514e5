"""Field-level checks for the SendGrid payload, each answering in SendGrid's own words.

A ``Checker`` collects ``ApiError``s (message, dotted field with list indexes, help URL as
SendGrid gives it) and the names of fields that were accepted but are not acted on. The
help URL is derived from the field the way SendGrid's error table is organised: list
indexes dropped, then the longest documented anchor that is a prefix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Final

from mtaserver.sendapi.model import Address, ApiError

HELP_BASE: Final = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"
_ANCHORS: Final = frozenset(
    [
        "personalizations",
        "personalizations.bcc",
        "personalizations.cc",
        "personalizations.custom_args",
        "personalizations.headers",
        "personalizations.send_at",
        "personalizations.subject",
        "personalizations.substitutions",
        "personalizations.to",
        "asm.group_id",
        "asm.groups_to_display",
        "attachments.content",
        "attachments.content_id",
        "attachments.disposition",
        "attachments.filename",
        "attachments.type",
        "batch_id",
        "categories",
        "content",
        "content.type",
        "content.value",
        "from",
        "headers",
        "ip_pool_name",
        "reply_to",
        "sections",
        "send_at",
        "subject",
        "template_id",
        "mail_settings.sandbox_mode.enable",
        "tracking_settings.click_tracking.enable",
        "tracking_settings.click_tracking.enable_text",
        "tracking_settings.open_tracking.enable",
        "tracking_settings.open_tracking.substitution_tag",
        "tracking_settings.subscription_tracking.enable",
        "tracking_settings.subscription_tracking.html",
        "tracking_settings.subscription_tracking.text",
        "tracking_settings.subscription_tracking.substitution_tag",
        "custom_args",
    ]
)
MAX_ERRORS: Final = 100

_LOCAL: Final = re.compile(r"[\w!#$%&'*+/=?^`{|}~-]+(?:\.[\w!#$%&'*+/=?^`{|}~-]+)*\Z")
_LABEL: Final = re.compile(r"(?!-)[\w-]{1,63}(?<!-)\Z")
_HEADER_NAME: Final = re.compile(r"[!-9;-~]+\Z")  # printable ASCII, no space, no colon
_CONTROL: Final = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def help_for(field: str | None) -> str | None:
    if field is None:
        return None
    path = [p for p in field.split(".") if not p.isdigit()]
    while path:
        anchor = ".".join(path)
        if anchor in _ANCHORS:
            return f"{HELP_BASE}#message.{anchor}"
        path.pop()
    return None


def json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def valid_email(email: str) -> bool:
    local, at, domain = email.rpartition("@")
    if not at or not local or not domain or len(local) > 64:
        return False
    labels = domain.split(".")
    return (
        bool(_LOCAL.match(local))
        and len(labels) >= 2
        and all(_LABEL.match(label) and "_" not in label for label in labels)
    )


def one_line(text: str) -> str:
    """A header value on one line: CR/LF runs become a space, other controls go."""
    if "\r" in text or "\n" in text:
        text = re.sub(r"[\r\n]+[ \t]*", " ", text)
    return _CONTROL.sub("", text)


def header_name_ok(name: str) -> bool:
    return bool(_HEADER_NAME.match(name))


class Checker:
    """Accumulates the errors and unknown field names of one request."""

    def __init__(self) -> None:
        self.errors: list[ApiError] = []
        self.unknown: set[str] = set()

    @property
    def full(self) -> bool:
        return len(self.errors) >= MAX_ERRORS

    def error(self, message: str, field: str | None, help_: str | None = "") -> None:
        if not self.full:
            self.errors.append(ApiError(message, field, help_for(field) if help_ == "" else help_))

    def type_error(self, field: str | None, expected: str, value: object) -> None:
        given = json_type(value)
        self.error(f"Invalid type. Expected: {expected}, given: {given}.", field)

    def note_unknown(self, data: Mapping[str, object], known: Iterable[str], prefix: str) -> None:
        for key in data.keys() - set(known):
            self.unknown.add(prefix + key)

    # -- typed getters: the value, or None after recording an error ------------------------
    def obj(self, value: object, field: str) -> dict[str, object] | None:
        if isinstance(value, dict):
            return value
        self.type_error(field, "object", value)
        return None

    def array(self, value: object, field: str) -> list[object] | None:
        if isinstance(value, list):
            return value
        self.type_error(field, "array", value)
        return None

    def string_map(self, value: object, field: str, message: str) -> tuple[tuple[str, str], ...]:
        """An object whose values must all be strings (headers, custom_args, …)."""
        data = self.obj(value, field)
        if data is None:
            return ()
        if not all(isinstance(v, str) for v in data.values()):
            self.error(message, field)
            return ()
        return tuple((str(k), str(v)) for k, v in data.items())

    def boolean(self, value: object, field: str, message: str) -> bool | None:
        if value is None:
            return None
        if isinstance(value, bool):
            return value
        self.error(message, field)
        return None

    def address(
        self, value: object, field: str, kind: str, limit: int, required_message: str
    ) -> Address | None:
        """An ``{"email", "name"}`` object; ``kind`` names it in messages ("To", "From")."""
        data = self.obj(value, field)
        if data is None:
            return None
        email = data.get("email")
        if email is None or email == "":
            self.error(required_message, f"{field}.email")
            return None
        if not isinstance(email, str):
            self.type_error(f"{field}.email", "string", email)
            return None
        email = email.strip()
        if len(email) > limit:
            self.error(
                f"The {kind} email exceeds the maximum total length of {limit} characters",
                f"{field}.email",
            )
            return None
        if not valid_email(email):
            prefix = "The from email does not" if kind == "From" else "Does not"
            self.error(f"{prefix} contain a valid address.", f"{field}.email")
            return None
        name = data.get("name")
        if name is not None and not isinstance(name, str):
            self.type_error(f"{field}.name", "string", name)
            return None
        self.note_unknown(data, ("email", "name"), strip_indexes(field) + ".")
        return Address(email, one_line(name).strip() or None if name else None)


def strip_indexes(field: str) -> str:
    """``personalizations.3.to.0`` → ``personalizations.to`` (how unknown fields are named)."""
    return ".".join(p for p in field.split(".") if not p.isdigit())
