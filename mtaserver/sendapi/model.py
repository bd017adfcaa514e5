"""The values of a SendGrid v3 ``POST /v3/mail/send`` request once it has been validated.

Everything is frozen: maps are tuples of pairs in the order given, merge data
(``dynamic_template_data``) is a read-only JSON tree (mapping proxies and tuples, see
``mtaserver.render.freeze``), attachment content is decoded bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Pairs = tuple[tuple[str, str], ...]

# SendGrid refuses these header names in ``headers`` (compared case-insensitively).
SENDGRID_RESERVED_HEADERS = frozenset(
    {
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "content-type",
        "content-transfer-encoding",
        "to",
        "from",
        "subject",
        "reply-to",
        "cc",
        "bcc",
    }
)


@dataclass(frozen=True, slots=True)
class Limits:
    """SendGrid's documented limits, each configurable."""

    max_personalizations: int = 1000
    max_recipients: int = 1000  # to + cc + bcc over the whole request
    max_total_bytes: int = 30 * 1024 * 1024  # the request body and its decoded content
    max_send_ahead: int = 72 * 3600  # send_at at most this many seconds after now
    max_address_chars: int = 320
    max_subject_chars: int = 998  # one RFC 5322 line
    max_header_value_chars: int = 998
    max_headers: int = 200
    max_categories: int = 10
    max_category_chars: int = 255
    max_custom_args_bytes: int = 10_000  # global + personalization, per personalization
    max_substitutions: int = 10_000
    max_reply_to_list: int = 1000
    max_groups_to_display: int = 25
    max_attachments: int = 100
    max_data_depth: int = 32  # nesting of dynamic_template_data
    reserved_headers: frozenset[str] = SENDGRID_RESERVED_HEADERS


@dataclass(frozen=True, slots=True)
class ApiError:
    """One entry of SendGrid's ``{"errors": [...]}`` body."""

    message: str
    field: str | None
    help: str | None

    def as_json(self) -> dict[str, str | None]:
        return {"message": self.message, "field": self.field, "help": self.help}


@dataclass(frozen=True, slots=True)
class Address:
    email: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Personalization:
    to: tuple[Address, ...]
    cc: tuple[Address, ...] = ()
    bcc: tuple[Address, ...] = ()
    from_: Address | None = None
    subject: str | None = None
    headers: Pairs = ()
    substitutions: Pairs = ()
    dynamic_template_data: object = None  # frozen JSON object, or None
    custom_args: Pairs = ()
    send_at: int | None = None

    @property
    def recipients(self) -> tuple[str, ...]:
        return tuple(a.email for a in (*self.to, *self.cc, *self.bcc))


@dataclass(frozen=True, slots=True)
class Content:
    type: str
    value: str


@dataclass(frozen=True, slots=True)
class Attachment:
    content: bytes
    filename: str
    type: str | None = None
    disposition: str = "attachment"  # or "inline"
    content_id: str | None = None


@dataclass(frozen=True, slots=True)
class Asm:
    group_id: int
    groups_to_display: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class TrackingSettings:
    """``None`` means "not given": the account's default applies."""

    click: bool | None = None
    click_in_text: bool | None = None
    open: bool | None = None
    open_substitution_tag: str | None = None
    subscription: bool | None = None
    subscription_text: str | None = None
    subscription_html: str | None = None
    subscription_substitution_tag: str | None = None


@dataclass(frozen=True, slots=True)
class MailRequest:
    personalizations: tuple[Personalization, ...]
    from_: Address
    reply_to: Address | None = None
    reply_to_list: tuple[Address, ...] = ()
    subject: str | None = None
    content: tuple[Content, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    template_id: str | None = None
    headers: Pairs = ()
    categories: tuple[str, ...] = ()
    custom_args: Pairs = ()
    sections: Pairs = ()
    send_at: int | None = None
    batch_id: str | None = None
    asm: Asm | None = None
    sandbox_mode: bool = False
    tracking: TrackingSettings = field(default_factory=TrackingSettings)

    @property
    def dynamic(self) -> bool:
        """A dynamic (Handlebars) template: SendGrid's ids for those start with ``d-``."""
        return self.template_id is not None and self.template_id.startswith("d-")

    @property
    def recipient_count(self) -> int:
        return sum(len(p.to) + len(p.cc) + len(p.bcc) for p in self.personalizations)


@dataclass(frozen=True, slots=True)
class ParseOutcome:
    """The request, or the errors to answer with (``status`` 400 or 413).

    ``unknown`` names every field that was accepted but is not acted on, as dotted paths
    without list indexes (``personalizations.foo``), for the caller to log once.
    """

    request: MailRequest | None
    errors: tuple[ApiError, ...] = ()
    status: int = 202
    unknown: frozenset[str] = frozenset()

    @property
    def ok(self) -> bool:
        return self.request is not None and not self.errors
