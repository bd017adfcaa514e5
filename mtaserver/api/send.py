"""``POST /v3/mail/send``: one request → one queued message per personalization.

Order of checks, each answered the way SendGrid answers it: the idempotent replay, the
payload (decoded and validated; over 64 KiB in a worker thread: a 30 MB body is CPU work),
sender binding (the key's user owns every ``from`` domain), the batch, the template, the
composed volume (413 over 1 GiB), the user's rate limit (the SMTP submission buckets, one
token per request as SMTP spends one per transaction), rendering and composing under a
render budget, then each message through the same ``prepare`` as SMTP (cleanup →
tracking → DKIM, a few at a time) with suppressed recipients (global, the sending
domain's, the ``asm`` group's) stored dropped. ``202`` comes only after every message,
its events and the idempotent answer are committed in one transaction.

Composing never holds the event loop for long: a small request (a few personalizations,
small content) is composed on the loop under a small render budget, because a thread hop
costs more than the work; anything larger, or a render that needs more than that budget,
is composed in a worker thread in 20 ms slices with the loop's turn between slices.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
from collections import OrderedDict
from dataclasses import replace
from typing import Final

from mtaserver.api.deps import ApiDeps, KeyInfo, Preparer, Sender
from mtaserver.api.errors import (
    SENDER_IDENTITY,
    TOO_MANY,
    UNAUTHORIZED,
    Answer,
    error,
    errors,
)
from mtaserver.log import get_logger, kv
from mtaserver.model import Event, PreparedMessage, Submission
from mtaserver.prepare import PrepareError
from mtaserver.render import RenderBudget, TemplateCache
from mtaserver.sendapi import (
    ComposedMessage,
    ComposeOutcome,
    Composition,
    Limits,
    MailRequest,
    ParseOutcome,
    StoredTemplate,
    parse_mail_send,
)
from mtaserver.sendapi.model import ApiError, TrackingSettings
from mtaserver.storage.sqlite.idempotency import IdemAnswer

log = get_logger("api")

MAX_IDEM_KEY: Final = 255
RENDER_OUTPUT_TOTAL: Final = 128 * 1024 * 1024  # characters rendered per request, at most
RENDER_STEPS_TOTAL: Final = 20_000_000  # template steps per request, at most
RENDER_SECONDS: Final = 2.0  # per render
# One request's composed messages, at most: 1,000 personalizations of a 30 MB attachment
# would otherwise be 40 GB held in memory, then queued.
COMPOSED_TOTAL: Final = 1024 * 1024 * 1024
COMPOSE_SLICE: Final = 0.02  # seconds of composing in a worker thread between loop turns
# Requests this small are decoded and composed on the loop: a thread hop costs more than
# the work (each GIL hand-over while a thread computes can hold the loop up to 5 ms).
INLINE_BODY: Final = 64 * 1024  # request bytes decoded on the loop
INLINE_PERSONALIZATIONS: Final = 8
INLINE_CONTENT: Final = 256 * 1024  # content + attachment + template bytes composed inline
INLINE_STEPS: Final = 10_000  # per render inline (~5 ms); a render needing more is redone
INLINE_OUTPUT: Final = 256 * 1024  # in a thread with the full budget
MAX_LOGGED_UNKNOWN: Final = 10_000


def group_scope(group_id: int) -> str:
    """The suppression scope of a SendGrid unsubscribe group (``asm.group_id``)."""
    return f"asm-group:{group_id}"


def _parse(body: bytes, now: int, limits: Limits) -> ParseOutcome:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return ParseOutcome(None, (ApiError("Bad Request", None, None),), 400)
    return parse_mail_send(data, now=now, limits=limits, body_size=len(body))


def _track_header(t: TrackingSettings) -> bytes:
    """``X-Mtaserver-Track`` from SendGrid's tracking_settings; empty when none was given
    (the user's configured default applies then)."""
    if t.open is None and t.click is None and t.subscription is None:
        return b""
    words = [w for w, on in (("opens", t.open), ("clicks", t.click),
                             ("unsubscribe", t.subscription)) if on]  # fmt: skip
    return b"X-Mtaserver-Track: " + (", ".join(words) or "none").encode() + b"\r\n"


def _campaign_header(categories: tuple[str, ...]) -> bytes:
    if not categories:
        return b""
    tag = "".join(c for c in categories[0] if 0x20 <= ord(c) < 0x7F).strip()[:128]
    return b"X-Mtaserver-Campaign: " + tag.encode() + b"\r\n" if tag else b""


class MailSend:
    def __init__(self, deps: ApiDeps) -> None:
        self._d = deps
        # One template cache per render slot: a cache is not shared between threads.
        self._caches: asyncio.Queue[TemplateCache] = asyncio.Queue()
        for _ in range(max(1, deps.render_slots)):
            self._caches.put_nowait(TemplateCache())
        self._loop_cache = TemplateCache()  # used on the loop's thread only
        self._logged: OrderedDict[tuple[str, str], None] = OrderedDict()

    async def handle(
        self, key: KeyInfo, body: bytes, idem_key: str | None, client_ip: str, tls: str | None
    ) -> Answer:
        d = self._d
        now = d.clock.now()
        window = d.idempotency_window()
        fingerprint = hashlib.sha256(body).hexdigest()
        if idem_key is not None:
            if not idem_key or len(idem_key) > MAX_IDEM_KEY or not idem_key.isprintable():
                return error(400, "The Idempotency-Key header must be 1-255 printable "
                             "characters.", "Idempotency-Key")  # fmt: skip
            prior = await d.intake.lookup(key.key_id, idem_key, now - window)
            if prior is not None:
                return self._replay(prior.status, prior.message_id, prior.fingerprint,
                                    fingerprint, prior.body)  # fmt: skip
        if len(body) <= INLINE_BODY:  # decoding and checking it is quicker than a thread hop
            outcome = _parse(body, int(now), d.limits())
        else:
            outcome = await asyncio.to_thread(_parse, body, int(now), d.limits())
        self._log_unknown(key, outcome.unknown)
        if not outcome.ok or outcome.request is None:
            return errors(outcome.status, outcome.errors)
        req = outcome.request
        found = await d.users.lookup(key.user)
        if found is None:
            return error(401, UNAUTHORIZED)
        user = found[0]
        refused = _sender_refused(req, user)
        if refused is not None:
            log.info(kv(event="api_sender_rejected", user=user.name, key=key.key_id,
                        field=refused))  # fmt: skip
            return error(403, SENDER_IDENTITY, refused)
        if req.batch_id is not None:
            batch = await d.batches.batch(req.batch_id)
            if batch is None or batch.user != user.name:
                return error(400, "The batch_id is not valid for your account.", "batch_id")
        template = await d.templates.get(req.template_id) if req.template_id else None
        volume = _volume(req, template)
        if volume > COMPOSED_TOTAL:
            return error(
                413,
                f"The request would compose about {volume >> 20} MiB of messages "
                f"({len(req.personalizations)} personalizations, each with its content and "
                f"attachments); at most {COMPOSED_TOTAL >> 20} MiB per request: send large "
                "attachments in fewer personalizations.",
                "attachments" if req.attachments else "content",
            )
        rate = d.user_rate()
        if rate is not None and not rate.take(user.name):
            log.info(kv(event="rate_limited", user=user.name, client_ip=client_ip, via="api"))
            return error(429, TOO_MANY)
        composed = await self._compose(req, template, now)
        if not composed.ok:
            return errors(400, composed.errors)
        if req.sandbox_mode:  # validated and rendered, never queued (as SendGrid does)
            return Answer(200)
        prepared = await self._prepare_all(composed.messages, user, client_ip, tls, now)
        if isinstance(prepared, Answer):
            return prepared
        x_message_id = secrets.token_urlsafe(16)
        events = [_api_event(m, p, x_message_id, key.key_id) for m, p in prepared]
        messages = [p for _, p in prepared]
        answer = None
        if idem_key is not None:
            answer = IdemAnswer(key.key_id, idem_key, fingerprint, 202, x_message_id, "", now)
        prior = await d.intake.commit(messages, events, answer, stale_before=now - window)
        if prior is not None:  # the same request committed first, from another connection
            return self._replay(prior.status, prior.message_id, prior.fingerprint,
                                fingerprint, prior.body)  # fmt: skip
        log.info(kv(event="api_queued", user=user.name, key=key.key_id, client_ip=client_ip,
                    x_message_id=x_message_id, messages=len(messages),
                    recipients=sum(len(m.recipients) for m in messages),
                    send_at=req.send_at, batch_id=req.batch_id))  # fmt: skip
        return Answer(202, headers=(("X-Message-Id", x_message_id),))

    # -- steps ---------------------------------------------------------------------------
    def _replay(self, status: int, message_id: str, was: str, now: str, body: str) -> Answer:
        if was != now:
            return error(
                422,
                "This Idempotency-Key was used with a different request body; use a new "
                "key for a new request.",
                "Idempotency-Key",
            )
        headers = (("X-Message-Id", message_id), ("Idempotent-Replayed", "true"))
        return Answer(status, body.encode(), headers)

    async def _compose(
        self, req: MailRequest, template: StoredTemplate | None, now: float
    ) -> ComposeOutcome:
        n = max(1, len(req.personalizations))
        budget = RenderBudget(
            max_output=min(RenderBudget().max_output, RENDER_OUTPUT_TOTAL // n),
            max_steps=min(RenderBudget().max_steps, max(2_000, RENDER_STEPS_TOTAL // n)),
            max_seconds=RENDER_SECONDS,
            monotonic=self._d.clock.monotonic,
        )
        if _small(req, template):
            # A few messages of small content: composed right here, under a budget that
            # keeps the loop's turn short; a render that needs more goes to a thread.
            inline = replace(
                budget,
                max_steps=min(budget.max_steps, INLINE_STEPS),
                max_output=min(budget.max_output, INLINE_OUTPUT),
                max_seconds=None,
            )
            quick = Composition(req, domain=self._d.hostname, cache=self._loop_cache,
                                template=template, budget=inline,
                                now=now)  # fmt: skip
            quick.step(None)
            if not quick.over_budget:
                return quick.outcome()
        cache = await self._caches.get()  # at most render_slots requests render at once
        try:
            work = Composition(req, domain=self._d.hostname, cache=cache, template=template,
                               budget=budget, now=now,
                               monotonic=self._d.clock.monotonic)  # fmt: skip
            # One slice per thread hop: between slices the loop runs whatever is waiting.
            while not await asyncio.to_thread(work.step, COMPOSE_SLICE):
                pass
            return work.outcome()
        finally:
            self._caches.put_nowait(cache)

    async def _prepare_all(
        self, composed: tuple[ComposedMessage, ...], user: Sender, client_ip: str,
        tls: str | None, now: float,
    ) -> list[tuple[ComposedMessage, PreparedMessage]] | Answer:  # fmt: skip
        preparer = self._d.preparer()
        step = max(1, self._d.prepare_concurrency)
        out: list[tuple[ComposedMessage, PreparedMessage]] = []
        for start in range(0, len(composed), step):
            chunk = composed[start : start + step]
            try:
                done = await asyncio.gather(
                    *(self._prepare(preparer, m, user, client_ip, tls, now) for m in chunk)
                )
            except PrepareError as exc:
                return error(400, f"The message was refused: {exc.reply}", "personalizations")
            out.extend(zip(chunk, done, strict=True))
        return out

    async def _prepare(
        self, preparer: Preparer, m: ComposedMessage, user: Sender, client_ip: str,
        tls: str | None, now: float,
    ) -> PreparedMessage:  # fmt: skip
        d = self._d
        sender_domain = m.envelope_sender.rpartition("@")[2].lower()
        dropped = []
        for address in m.recipients:
            hit = await d.suppressions.check(address, sender_domain)
            if hit is None and m.asm_group_id is not None:
                hit = await d.suppressions.check(address, group_scope(m.asm_group_id))
            if hit is not None:
                dropped.append((address, str(getattr(hit, "reason", hit))))
        data = _track_header(m.tracking) + _campaign_header(m.categories) + m.message
        sub = Submission(
            sender=m.envelope_sender, recipients=m.recipients, data=data, client_ip=client_ip,
            helo="", user=user.name, tls_version=tls, listener="api", received_at=now,
            dropped=tuple(dropped),
        )  # fmt: skip
        queue_id = d.new_queue_id(now)
        msg = await preparer.prepare(sub, queue_id)
        due = float(m.send_at) if m.send_at is not None and m.send_at > now else None
        return replace(msg, not_before=due, batch_id=m.batch_id)

    def _log_unknown(self, key: KeyInfo, fields: frozenset[str]) -> None:
        for name in sorted(fields):
            if (key.key_id, name) in self._logged:
                continue
            self._logged[(key.key_id, name)] = None
            while len(self._logged) > MAX_LOGGED_UNKNOWN:
                self._logged.popitem(last=False)
            log.info(kv(event="api_unknown_field", key=key.key_id, user=key.user, field=name))


def _content_size(req: MailRequest, template: StoredTemplate | None) -> int:
    """Characters of content and bytes of attachments one message carries (before
    rendering and transfer encoding)."""
    size = sum(len(c.value) for c in req.content) + sum(len(a.content) for a in req.attachments)
    if template is not None:
        size += sum(len(x) for x in (template.subject, template.html, template.text) if x)
    return size


def _volume(req: MailRequest, template: StoredTemplate | None) -> int:
    """Bytes the composed messages will take, about (base64 adds a third)."""
    return len(req.personalizations) * _content_size(req, template) * 4 // 3


def _small(req: MailRequest, template: StoredTemplate | None) -> bool:
    if len(req.personalizations) > INLINE_PERSONALIZATIONS:
        return False
    return _content_size(req, template) <= INLINE_CONTENT


def _sender_refused(req: MailRequest, user: Sender) -> str | None:
    """The field whose from address the user may not send as, or None."""
    if not user.owns(req.from_.email.rpartition("@")[2]):
        return "from"
    for i, p in enumerate(req.personalizations):
        if p.from_ is not None and not user.owns(p.from_.email.rpartition("@")[2]):
            return f"personalizations.{i}.from"
    return None


def _api_event(m: ComposedMessage, p: PreparedMessage, x_message_id: str, key_id: str) -> Event:
    """What a SendGrid-format webhook needs about the message beyond the queue's own
    events: the request's X-Message-Id, categories, custom args, unsubscribe group."""
    return Event(
        type="api_message",
        at=p.received_at,
        queue_id=p.queue_id,
        data=(
            ("x_message_id", x_message_id),
            ("personalization", m.index),
            ("key_id", key_id),
            ("categories", json.dumps(list(m.categories))),
            ("custom_args", json.dumps(dict(m.custom_args))),
            ("asm_group_id", m.asm_group_id),
            ("batch_id", m.batch_id),
            ("message_id", m.message_id),
        ),
    )
