"""A parsed send request → one RFC 5322 message per personalization.

Rendering happens here, before anything is signed: with a dynamic template (``d-…``) the
template's subject/html/text are rendered with the personalization's
``dynamic_template_data``; otherwise ``substitutions`` (and ``sections``) are replaced
literally in the subject, bodies and custom header values, as SendGrid does. The message
is multipart/alternative for text + html, multipart/related for inline parts with a
``content_id``, multipart/mixed for attachments; Bcc recipients are in the envelope only.
It is written by ``mime`` directly (18x cheaper); what that writer leaves out (SMTPUTF8
addresses, values that look like encoded words) is built with the stdlib ``email``
package, whose header block is checked against what was set, so nothing rendered into a
header can inject another one (the direct writer never re-parses a value).
"""

from __future__ import annotations

import random
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.headerregistry import Address as EmailAddress
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime, formatdate
from typing import Final

from mtaserver.render import (
    BudgetExceeded,
    RenderBudget,
    TemplateCache,
    TemplateError,
    substitute,
)
from mtaserver.sendapi import mime
from mtaserver.sendapi.checks import help_for, one_line
from mtaserver.sendapi.model import (
    Address,
    ApiError,
    Attachment,
    MailRequest,
    Pairs,
    Personalization,
    TrackingSettings,
)

_POLICY: Final = SMTP.clone(max_line_length=78)
_UTF8_POLICY: Final = _POLICY.clone(utf8=True)
_REPLACES: Final = frozenset({"message-id", "date", "mime-version"})


@dataclass(frozen=True, slots=True)
class StoredTemplate:
    """A template version as stored: any of its parts may be absent."""

    subject: str | None = None
    html: str | None = None
    text: str | None = None


@dataclass(frozen=True, slots=True)
class ComposedMessage:
    index: int  # the personalization it came from
    envelope_sender: str
    recipients: tuple[str, ...]  # to + cc + bcc, each once
    message: bytes  # CRLF line endings, ready for prepare → DKIM → spool
    message_id: str
    categories: tuple[str, ...]
    custom_args: Pairs  # global, overridden by the personalization's
    send_at: int | None
    batch_id: str | None
    asm_group_id: int | None
    asm_groups_to_display: tuple[int, ...]
    sandbox: bool
    tracking: TrackingSettings


@dataclass(frozen=True, slots=True)
class ComposeOutcome:
    messages: tuple[ComposedMessage, ...]
    errors: tuple[ApiError, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors


class MessageIds:
    """Message-IDs from one seeded generator: random, unique, and no system call per id.

    ``secrets.token_hex`` per message reads ``os.urandom``, which releases and retakes the
    GIL; a composing thread doing that once per message keeps the event loop's thread from
    ever winning the GIL (measured: stalls of up to a second over 1,000 messages).
    """

    def __init__(self) -> None:
        self._random = random.Random(secrets.randbits(128))

    def __call__(self, domain: str) -> str:
        return f"<{self._random.getrandbits(96):024x}@{domain}>"


def compose(
    request: MailRequest,
    *,
    domain: str,
    cache: TemplateCache,
    template: StoredTemplate | None = None,
    budget: RenderBudget | None = None,
    now: float | None = None,
    message_id: Callable[[str], str] | None = None,
    direct: bool = True,
) -> ComposeOutcome:
    """All messages of ``request``, or the errors (a template that fails to render).

    ``domain`` is used in generated Message-IDs; ``now`` (Unix time), when given, sets the
    Date header; otherwise the prepare stage adds it. ``direct=False`` builds every message
    with the stdlib ``email`` package (the reference the direct writer is tested against).
    """
    work = Composition(request, domain=domain, cache=cache, template=template,
                       budget=budget, now=now, message_id=message_id,
                       direct=direct)  # fmt: skip
    work.step(None)
    return work.outcome()


class Composition:
    """``compose`` in slices: ``step`` builds messages until its time slice is spent.

    A caller in a worker thread returns to the event loop after each slice, so a request
    with 1,000 personalizations never holds the loop's thread off for longer than a slice,
    whatever the GIL scheduling does.
    """

    def __init__(
        self,
        request: MailRequest,
        *,
        domain: str,
        cache: TemplateCache,
        template: StoredTemplate | None = None,
        budget: RenderBudget | None = None,
        now: float | None = None,
        message_id: Callable[[str], str] | None = None,
        monotonic: Callable[[], float] | None = None,  # needed for step(seconds)
        direct: bool = True,
    ) -> None:
        self._request = request
        self._monotonic = monotonic
        self._next = 0
        self._out: list[ComposedMessage] = []
        self._errors: tuple[ApiError, ...] = ()
        self.over_budget = False  # the error is a render that ran out of its budget
        if request.template_id and template is None:
            error = ApiError(
                "The template_id must be a valid template ID for your account. You provided "
                f"{request.template_id}.",
                "template_id",
                help_for("template_id"),
            )
            self._errors = (error,)
        self._builder = _Builder(request, cache, template, budget or RenderBudget(), now,
                                 domain, message_id or MessageIds(), direct)  # fmt: skip

    @property
    def done(self) -> bool:
        return bool(self._errors) or self._next >= len(self._request.personalizations)

    def step(self, seconds: float | None) -> bool:
        """Build messages for about ``seconds`` (all when None); True once finished."""
        clock = self._monotonic
        if seconds is not None and clock is None:
            raise ValueError("Composition.step(seconds) needs the monotonic clock")
        deadline = None if seconds is None or clock is None else clock() + seconds
        people = self._request.personalizations
        while not self.done:
            i = self._next
            try:
                self._out.append(self._builder.build(i, people[i]))
            except TemplateError as exc:
                self.over_budget = isinstance(exc, BudgetExceeded)
                dynamic = self._request.dynamic
                field = "template_id" if dynamic else f"personalizations.{i}.substitutions"
                self._errors = (ApiError(exc.message, field, help_for(field)),)
            except (ValueError, TypeError, IndexError) as exc:
                self._errors = (ApiError(_mime_error(exc), f"personalizations.{i}", None),)
            self._next = i + 1
            if deadline is not None and clock is not None and clock() >= deadline:
                break
        return self.done

    def outcome(self) -> ComposeOutcome:
        if self._errors:
            return ComposeOutcome((), self._errors)
        return ComposeOutcome(tuple(self._out))


def _mime_error(exc: Exception) -> str:
    return "The message could not be built from this personalization: " + (
        str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    )


class _Builder:
    def __init__(
        self,
        request: MailRequest,
        cache: TemplateCache,
        template: StoredTemplate | None,
        budget: RenderBudget,
        now: float | None,
        domain: str,
        message_id: Callable[[str], str],
        direct: bool,
    ) -> None:
        self.r = request
        self.cache = cache
        self.template = template
        self.budget = budget
        self.now = now
        self.rng = random.Random(secrets.randbits(128))  # MIME boundaries
        self.direct = direct
        self.domain = domain
        self.message_id = message_id

    # -- rendering -----------------------------------------------------------------------
    def _render(self, source: str | None, p: Personalization) -> str | None:
        if source is None:
            return None
        if self.r.dynamic:
            data = p.dynamic_template_data if p.dynamic_template_data is not None else {}
            return self.cache.render(source, data, self.budget)
        if p.substitutions:
            return substitute(
                source, dict(p.substitutions), dict(self.r.sections), self.budget.max_output
            )
        return source

    def _parts(self, p: Personalization) -> tuple[str | None, list[tuple[str, str]]]:
        """The subject and the (content type, text) bodies, rendered."""
        r, t = self.r, self.template
        subject = p.subject or r.subject
        bodies = [(c.type, c.value) for c in r.content]
        if t is not None and r.dynamic:
            if t.subject:
                subject = t.subject
            bodies = [(ct, v) for ct, v in bodies if ct not in ("text/plain", "text/html")]
            if t.html is not None:
                bodies.insert(0, ("text/html", t.html))
            if t.text is not None:
                bodies.insert(0, ("text/plain", t.text))
        elif t is not None:  # legacy template: wraps the request's content
            subject = (t.subject or "<%subject%>").replace("<%subject%>", subject or "")
            given = dict(bodies)
            for ctype, wrapper in (("text/plain", t.text), ("text/html", t.html)):
                if wrapper is not None:
                    given[ctype] = wrapper.replace("<%body%>", given.get(ctype, ""))
            order = {"text/plain": 0, "text/html": 1}
            bodies = sorted(given.items(), key=lambda kv: order.get(kv[0], 2))
        rendered = [(ct, self._render(v, p) or "") for ct, v in bodies]
        subject = self._render(subject, p)
        return (one_line(subject) if subject is not None else None), rendered

    # -- the message ---------------------------------------------------------------------
    def build(self, index: int, p: Personalization) -> ComposedMessage:
        r = self.r
        subject, bodies = self._parts(p)
        sender = p.from_ or r.from_
        replies = r.reply_to_list or ((r.reply_to,) if r.reply_to else ())
        headers = dict(r.headers) | dict(p.headers)
        custom = {k.lower() for k in headers}
        mid = self.message_id(self.domain)
        extra: list[tuple[str, str]] = []
        for name, value in headers.items():
            # substitutions apply to custom header values; Handlebars does not
            rendered = value if r.dynamic else one_line(self._render(value, p) or "")
            extra.append((name, rendered))
            if name.lower() == "message-id":
                mid = rendered
        fields = _Fields(sender, p, replies, subject, None if "message-id" in custom else mid,
                         None if "date" in custom else self.now, extra)  # fmt: skip
        data = _fast_message(fields, bodies, r.attachments, self.rng) if self.direct else None
        if data is None:  # what the direct writer does not cover: the stdlib builds it
            data = _stdlib_message(fields, bodies, r.attachments)
        merged_args = tuple((dict(r.custom_args) | dict(p.custom_args)).items())
        return ComposedMessage(
            index=index,
            envelope_sender=sender.email,
            recipients=tuple(dict.fromkeys(p.recipients)),
            message=data,
            message_id=mid,
            categories=r.categories,
            custom_args=merged_args,
            send_at=p.send_at if p.send_at is not None else r.send_at,
            batch_id=r.batch_id,
            asm_group_id=r.asm.group_id if r.asm else None,
            asm_groups_to_display=r.asm.groups_to_display if r.asm else (),
            sandbox=r.sandbox_mode,
            tracking=r.tracking,
        )


@dataclass(frozen=True, slots=True)
class _Fields:
    """The top-level header fields of one message, before encoding."""

    sender: Address
    p: Personalization
    replies: tuple[Address, ...]
    subject: str | None
    message_id: str | None  # None when a custom header sets it
    date: float | None  # None when unknown or a custom header sets it
    extra: list[tuple[str, str]]  # custom headers, rendered


def _fast_message(
    f: _Fields, bodies: list[tuple[str, str]], attachments: tuple[Attachment, ...],
    rng: random.Random,
) -> bytes | None:  # fmt: skip
    """The message from the direct writer, or None for a case it leaves to the stdlib."""
    try:
        out = [mime.fold("From", mime.address(f.sender)),
               mime.fold("To", mime.address_list(f.p.to))]  # fmt: skip
        if f.p.cc:
            out.append(mime.fold("Cc", mime.address_list(f.p.cc)))
        if f.replies:
            out.append(mime.fold("Reply-To", mime.address_list(f.replies)))
        if f.subject is not None:
            out.append(mime.fold("Subject", mime.unstructured(f.subject)))
        if f.message_id is not None:
            out.append(mime.fold("Message-ID", f.message_id))
        if f.date is not None:
            out.append(mime.fold("Date", format_datetime(datetime.fromtimestamp(f.date, UTC))))
        for name, value in f.extra:
            if not value.isprintable():
                raise mime.Unsupported("control characters")
            out.append(mime.fold(name, mime.unstructured(value)))
        head, body = mime.body_tree(bodies, attachments, rng)
    except (mime.Unsupported, UnicodeError):
        return None
    out.append(b"MIME-Version: 1.0\r\n")
    return b"".join(out) + head + b"\r\n" + body


def _stdlib_message(
    f: _Fields, bodies: list[tuple[str, str]], attachments: tuple[Attachment, ...]
) -> bytes:
    msg = EmailMessage(policy=_POLICY)
    expected: list[str] = []

    def put(name: str, value: str) -> None:
        msg[name] = value
        expected.append(name.lower())

    put("From", _format(f.sender))
    put("To", ", ".join(_format(a) for a in f.p.to))
    if f.p.cc:
        put("Cc", ", ".join(_format(a) for a in f.p.cc))
    if f.replies:
        put("Reply-To", ", ".join(_format(a) for a in f.replies))
    if f.subject is not None:
        put("Subject", f.subject)
    if f.message_id is not None:
        put("Message-ID", f.message_id)
    if f.date is not None:
        put("Date", formatdate(f.date, usegmt=True))
    for name, value in f.extra:
        put(name, value)
    _body(msg, bodies, attachments)
    expected.append("mime-version")
    if "content-type" in msg:
        expected.append("content-type")
    if "content-transfer-encoding" in msg:
        expected.append("content-transfer-encoding")
    policy = _POLICY if _ascii_addresses(f.sender, f.p, f.replies) else _UTF8_POLICY
    data = msg.as_bytes(policy=policy)
    _check_headers(data, expected)
    return data


def _format(a: Address) -> str:
    local, _, domain = a.email.rpartition("@")
    return str(EmailAddress(display_name=a.name or "", username=local, domain=domain))


def _ascii_addresses(sender: Address, p: Personalization, replies: tuple[Address, ...]) -> bool:
    return all(a.email.isascii() for a in (sender, *p.to, *p.cc, *replies))


def _body(
    msg: EmailMessage, bodies: list[tuple[str, str]], attachments: tuple[Attachment, ...]
) -> None:
    inline = [a for a in attachments if a.disposition == "inline" and a.content_id]
    files = [a for a in attachments if a not in inline]
    if not bodies:
        bodies = [("text/plain", "")]
    for i, (ctype, text) in enumerate(bodies):
        maintype, _, subtype = ctype.partition("/")
        if maintype != "text" or not subtype:
            subtype = "plain"  # a content block is text; files belong in attachments
        if i == 0:
            msg.set_content(text, subtype=subtype, charset="utf-8", cte=_cte(text))
        else:
            msg.add_alternative(text, subtype=subtype, charset="utf-8", cte=_cte(text))
    if inline:
        html = _find_html(msg)
        for a in inline:
            maintype, _, subtype = (a.type or "application/octet-stream").partition("/")
            html.add_related(
                a.content,
                maintype=maintype,
                subtype=subtype or "octet-stream",
                cid=f"<{a.content_id}>",
                disposition="inline",
                filename=a.filename,
            )
    for a in files:
        maintype, _, subtype = (a.type or "application/octet-stream").partition("/")
        msg.add_attachment(
            a.content, maintype=maintype, subtype=subtype or "octet-stream", filename=a.filename
        )


def _find_html(msg: EmailMessage) -> EmailMessage:
    for part in msg.walk():
        if part.get_content_type() == "text/html":
            assert isinstance(part, EmailMessage)
            return part
    return msg


def _cte(text: str) -> str:
    """quoted-printable keeps mostly-ASCII text readable; base64 for everything else."""
    if text.isascii() and all(len(line) <= 998 for line in text.splitlines()):
        return "7bit" if all(len(line) <= 78 for line in text.splitlines()) else "quoted-printable"
    return "quoted-printable" if sum(not c.isascii() for c in text) * 4 < len(text) else "base64"


_NAME: Final = re.compile(rb"^([!-9;-~]+):", re.MULTILINE)


def _check_headers(data: bytes, expected: list[str]) -> None:
    """Every top-level header must be one that was set: refuse an injected one."""
    head = data.split(b"\r\n\r\n", 1)[0]
    names = sorted(m.group(1).decode().lower() for m in _NAME.finditer(head))
    if names != sorted(expected):
        raise ValueError("a header value produced an unexpected header")
