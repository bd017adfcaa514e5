"""Parse and validate a SendGrid v3 ``POST /v3/mail/send`` body into a ``MailRequest``.

The body arrives already decoded from JSON. Validation answers the way SendGrid does — a
list of ``{"message", "field", "help"}`` errors naming the field with its list indexes —
so an application's existing error handling keeps working. Limits come from ``Limits``;
the current time is passed in (``now``), never read. Fields that are accepted but not acted
on are returned by name for the caller to log once.
"""

from __future__ import annotations

from typing import Final

from mtaserver.render import freeze
from mtaserver.sendapi.checks import Checker, header_name_ok, one_line
from mtaserver.sendapi.model import (
    Address,
    Asm,
    Limits,
    MailRequest,
    Pairs,
    ParseOutcome,
    Personalization,
    TrackingSettings,
)
from mtaserver.sendapi.parts import parse_attachments, parse_categories, parse_content
from mtaserver.sendapi.settings import parse_asm, parse_sandbox, parse_tracking

DEFAULT_LIMITS: Final = Limits()
TOO_LARGE: Final = "The JSON payload you have included in your request is too large."
_TOP: Final = frozenset(
    [
        "personalizations",
        "from",
        "reply_to",
        "reply_to_list",
        "subject",
        "content",
        "attachments",
        "template_id",
        "headers",
        "categories",
        "custom_args",
        "sections",
        "send_at",
        "batch_id",
        "asm",
        "mail_settings",
        "tracking_settings",
    ]
)
_PERSONALIZATION: Final = frozenset(
    [
        "to",
        "cc",
        "bcc",
        "from",
        "subject",
        "headers",
        "substitutions",
        "dynamic_template_data",
        "custom_args",
        "send_at",
    ]
)
_FROM_REQUIRED: Final = (
    "The from object must be provided for every email send. It is an object that requires "
    'the email parameter, but may also contain a name parameter.  e.g. {"email" : '
    '"example@example.com"}  or {"email" : "example@example.com", "name" : '
    '"Example Recipient"}.'
)
_TO_REQUIRED: Final = (
    "The to array is required for all personalization objects, and must have at least one "
    "email object with a valid email address."
)
_SUBJECT_REQUIRED: Final = (
    "The subject is required. You can get around this requirement if you use a template "
    "with a subject defined or if every personalization has a subject defined."
)
_SEND_AT: Final = (
    "The send_at parameter is expecting a Unix timestamp as an integer. We will send "
    "immediately if you include a send_at timestamp that is in the past."
)


def too_large() -> ParseOutcome:
    """The 413 answer, for a body refused by size before it is decoded."""
    c = Checker()
    c.error(TOO_LARGE, None, None)
    return ParseOutcome(None, tuple(c.errors), 413)


def parse_mail_send(
    body: object, *, now: int, limits: Limits = DEFAULT_LIMITS, body_size: int | None = None
) -> ParseOutcome:
    """Validate ``body``; ``now`` is the Unix time ``send_at`` is measured from."""
    if body_size is not None and body_size > limits.max_total_bytes:
        return too_large()
    c = Checker()
    data = c.obj(body, "") if isinstance(body, dict) else None
    if data is None:
        c.type_error(None, "object", body)
        return ParseOutcome(None, tuple(c.errors), 400)
    c.note_unknown(data, _TOP, "")
    p = _Parser(c, limits, now)
    request = p.request(data)
    if p.size > limits.max_total_bytes:
        return too_large()
    unknown = frozenset(c.unknown)
    if c.errors or request is None:
        return ParseOutcome(None, tuple(c.errors), 400, unknown)
    return ParseOutcome(request, (), 202, unknown)


class _Parser:
    def __init__(self, c: Checker, limits: Limits, now: int) -> None:
        self.c = c
        self.limits = limits
        self.now = now
        self.size = 0  # decoded content and attachment bytes

    def request(self, d: dict[str, object]) -> MailRequest | None:
        c, lim = self.c, self.limits
        personalizations = self.personalizations(d.get("personalizations"))
        from_ = None
        if d.get("from") is None:
            c.error(_FROM_REQUIRED, "from.email")
        else:
            from_ = c.address(d["from"], "from", "From", lim.max_address_chars, _FROM_REQUIRED)
        reply_to = None
        if d.get("reply_to") is not None:
            reply_to = c.address(
                d["reply_to"], "reply_to", "Reply-To", lim.max_address_chars, _reply_required()
            )
        reply_to_list = self.reply_to_list(d.get("reply_to_list"))
        if reply_to is not None and reply_to_list:
            c.error("The reply_to and reply_to_list parameters cannot both be used.", "reply_to")
        template_id = d.get("template_id")
        if template_id is not None and not isinstance(template_id, str):
            c.error(f"The template ID must be a string, you provided {template_id}.", "template_id")
            template_id = None
        subject = self.subject(d.get("subject"), "subject")
        every = all(p.subject for p in personalizations)
        if subject is None and "subject" not in d and not template_id and not every:
            c.error(_SUBJECT_REQUIRED, "subject")
        content, n = parse_content(c, d.get("content"), required=not template_id)
        attachments, m = parse_attachments(c, d.get("attachments"), lim)
        self.size += n + m
        headers = self.headers(d.get("headers"), "headers", personal=False)
        custom_args = self.custom_args(d.get("custom_args"), "custom_args")
        for i, p in enumerate(personalizations):
            merged = dict(custom_args) | dict(p.custom_args)
            if sum(len(k.encode()) + len(v.encode()) for k, v in merged.items()) > (
                lim.max_custom_args_bytes
            ):
                c.error(
                    "The combined size of both global and personalization custom arguments "
                    "may not exceed 10,000 bytes per personalization.",
                    f"personalizations.{i}.custom_args",
                )
        sections = c.string_map(
            d.get("sections") or {}, "sections", "The section values must be strings."
        )
        batch_id = d.get("batch_id")
        if batch_id is not None and not isinstance(batch_id, str):
            c.error("The batch_id must be a string.", "batch_id")
            batch_id = None
        asm = parse_asm(c, d.get("asm"), lim.max_groups_to_display)
        categories = parse_categories(c, d.get("categories"), lim)
        send_at = self.send_at(d.get("send_at"), "send_at")
        sandbox = parse_sandbox(c, d.get("mail_settings"))
        tracking = parse_tracking(c, d.get("tracking_settings")) or TrackingSettings()
        if c.errors or from_ is None:
            return None
        return MailRequest(
            personalizations=tuple(personalizations),
            from_=from_,
            reply_to=reply_to,
            reply_to_list=reply_to_list,
            subject=subject,
            content=content,
            attachments=attachments,
            template_id=template_id or None,
            headers=headers,
            categories=categories,
            custom_args=custom_args,
            sections=sections,
            send_at=send_at,
            batch_id=batch_id,
            asm=asm if isinstance(asm, Asm) else None,
            sandbox_mode=sandbox,
            tracking=tracking,
        )

    # -- personalizations ----------------------------------------------------------------
    def personalizations(self, value: object) -> list[Personalization]:
        c, lim = self.c, self.limits
        if value is None or value == []:
            c.error(
                "The personalizations field is required and must have at least one "
                "personalization.",
                "personalizations",
                "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"
                "#-Personalizations-Errors",
            )
            return []
        items = c.array(value, "personalizations")
        if items is None:
            return []
        if len(items) > lim.max_personalizations:
            c.error(
                f"The personalization block is limited to {lim.max_personalizations} "
                f"personalizations per API request. You have provided {len(items)} "
                "personalizations. Please consider splitting this into multiple requests and "
                "resending your request.",
                "personalizations",
            )
            return []
        out = []
        total = 0
        for i, item in enumerate(items):
            if c.full:
                break
            p = self.personalization(item, f"personalizations.{i}")
            if p is not None:
                out.append(p)
                total += len(p.to) + len(p.cc) + len(p.bcc)
        if total > lim.max_recipients:
            c.error(
                f"There is a limit of {lim.max_recipients} total recipients (to + cc + bcc) "
                "per request.",
                "personalizations",
            )
        substitutions = sum(len(p.substitutions) for p in out)
        if substitutions > lim.max_substitutions:
            c.error(
                f"You are limited to {lim.max_substitutions:,} substitutions.",
                "personalizations.0.substitutions",
            )
        return out

    def personalization(self, value: object, at: str) -> Personalization | None:
        c, lim = self.c, self.limits
        d = c.obj(value, at)
        if d is None:
            return None
        c.note_unknown(d, _PERSONALIZATION, "personalizations.")
        errors = len(c.errors)
        lists: dict[str, tuple[Address, ...]] = {}
        for kind in ("to", "cc", "bcc"):
            lists[kind] = self.recipients(d.get(kind), f"{at}.{kind}", kind)
        if not lists["to"] and len(c.errors) == errors:
            c.error(_TO_REQUIRED, f"{at}.to")
        seen: set[str] = set()
        for kind in ("to", "cc", "bcc"):
            for a in lists[kind]:
                key = a.email.lower()
                if key in seen:
                    c.error(
                        "Each email address in the personalization block should be unique "
                        "between to, cc, and bcc. We found the first duplicate instance of "
                        f"[{a.email}] in the {at}.{kind} field.",
                        at,
                    )
                    break
                seen.add(key)
        from_ = None
        if d.get("from") is not None:
            from_ = c.address(
                d["from"], f"{at}.from", "From", lim.max_address_chars, _FROM_REQUIRED
            )
        data = d.get("dynamic_template_data")
        frozen: object = None
        if data is not None and c.obj(data, f"{at}.dynamic_template_data") is not None:
            try:
                frozen = freeze(data, lim.max_data_depth)
            except (ValueError, RecursionError):
                c.error(
                    "The dynamic_template_data must be JSON nested at most "
                    f"{lim.max_data_depth} levels deep.",
                    f"{at}.dynamic_template_data",
                )
        subs = c.string_map(
            d.get("substitutions") or {},
            f"{at}.substitutions",
            "The substitution values must be an object of key/value pairs, where the values "
            "are all strings.",
        )
        personal = Personalization(
            to=lists["to"],
            cc=lists["cc"],
            bcc=lists["bcc"],
            from_=from_,
            subject=self.subject(d.get("subject"), f"{at}.subject"),
            headers=self.headers(d.get("headers"), f"{at}.headers", personal=True),
            substitutions=subs,
            dynamic_template_data=frozen,
            custom_args=self.custom_args(d.get("custom_args"), f"{at}.custom_args"),
            send_at=self.send_at(d.get("send_at"), f"{at}.send_at"),
        )
        return personal if len(c.errors) == errors else None

    def recipients(self, value: object, at: str, kind: str) -> tuple[Address, ...]:
        if value is None:
            return ()
        items = self.c.array(value, at)
        if items is None:
            return ()
        label = {"to": "To", "cc": "CC", "bcc": "BCC"}[kind]
        required = f"The {kind} email parameter is required."
        found = [
            self.c.address(item, f"{at}.{j}", label, self.limits.max_address_chars, required)
            for j, item in enumerate(items)
        ]
        return tuple(a for a in found if a is not None)

    def reply_to_list(self, value: object) -> tuple[Address, ...]:
        if value is None:
            return ()
        items = self.c.array(value, "reply_to_list")
        if items is None:
            return ()
        if len(items) > self.limits.max_reply_to_list:
            self.c.error(
                f"There is a limit of {self.limits.max_reply_to_list} reply_to_list emails.",
                "reply_to_list",
            )
            return ()
        found = [
            self.c.address(
                item,
                f"reply_to_list.{j}",
                "Reply-To",
                self.limits.max_address_chars,
                _reply_required(),
            )
            for j, item in enumerate(items)
        ]
        emails = [a.email.lower() for a in found if a is not None]
        if len(set(emails)) != len(emails):
            self.c.error(
                "Each email address in the reply_to_list should be unique.", "reply_to_list"
            )
        return tuple(a for a in found if a is not None)

    # -- scalar fields -------------------------------------------------------------------
    def subject(self, value: object, at: str) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or value == "":
            self.c.error(
                "The subject of your email must be a string at least one character in length.",
                at,
            )
            return None
        subject = one_line(value)
        if len(subject) > self.limits.max_subject_chars:
            self.c.error(
                f"The subject may not be longer than {self.limits.max_subject_chars} characters.",
                at,
            )
            return None
        return subject

    def send_at(self, value: object, at: str) -> int | None:
        if value is None:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            self.c.error(_SEND_AT, at)
            return None
        if value > self.now + self.limits.max_send_ahead:
            hours = self.limits.max_send_ahead // 3600
            self.c.error(f"Scheduling more than {hours} hours in advance is forbidden.", at)
            return None
        return value

    def headers(self, value: object, at: str, personal: bool) -> Pairs:
        c, lim = self.c, self.limits
        if value is None:
            return ()
        message = (
            "All values of the headers object must be strings."
            if personal
            else "The header values must be strings."
        )
        pairs = c.string_map(value, at, message)
        if len(pairs) > lim.max_headers:
            c.error(f"There is a limit of {lim.max_headers} headers.", at)
            return ()
        seen: set[str] = set()
        out = []
        for name, raw in pairs:
            lower = name.lower()
            if not header_name_ok(name):
                c.error("Header keys cannot contain non-ASCII characters and empty spaces.", at)
            elif lower in lim.reserved_headers:
                c.error(
                    "Header cannot be one of the reserved keys."
                    if personal
                    else "Header can not be one of the reserved keys.",
                    at,
                )
            elif lower in seen:
                c.error("The headers cannot contain duplicate keys.", at)
            elif len(raw) > lim.max_header_value_chars:
                c.error(
                    f"Header values may not be longer than {lim.max_header_value_chars} "
                    "characters.",
                    at,
                )
            else:
                seen.add(lower)
                out.append((name, one_line(raw)))
        return tuple(out)

    def custom_args(self, value: object, at: str) -> Pairs:
        if value is None:
            return ()
        return self.c.string_map(value, at, "All values of custom arguments object must be strings")


def _reply_required() -> str:
    return (
        "The reply_to object, when used, must at least have an email parameter with a valid "
        'email address and it may also contain a name parameter. e.g. {"email": '
        '"example@example.com"} or {"email": "example@example.com", "name": '
        '"Example Recipient"}'
    )
