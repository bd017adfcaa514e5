"""``parse_bounce``: what an inbound bounce, complaint or auto-reply says.

Order of evidence, most reliable first: an RFC 5965 feedback report (a complaint); an
RFC 3464 delivery-status part (possibly wrapped by a gateway); the free-form text of the
notice. Auto-replies (RFC 3834 headers, "Out of Office" subjects) and ordinary mail are not
bounces and give ``None``. Classification of every recipient goes through the one shared
table in :mod:`mtaserver.classify`.
"""

from __future__ import annotations

import re

from mtaserver.classify import STATUS_RE, best_status, default_classifier, is_generic
from mtaserver.dsn import complaint, mime, report, text
from mtaserver.dsn.limits import DEFAULT_LIMITS, ParseLimits
from mtaserver.dsn.recipient import ParsedRecipient
from mtaserver.model import BounceReport

DSN_TYPES = frozenset(
    {"message/delivery-status", "message/global-delivery-status", "message/xdelivery-status"}
)
_HARD_TEXT_REASONS = frozenset({"userunknown", "mailboxfull", "suspend", "hostunknown"})

_SENDER_RE = re.compile(
    r"mailer-daemon|post_?master|mail delivery|mail administrator|mailadm|delivery subsystem"
    r"|system administrator|delivery system|mdaemon|smtp_mail_service|jetmail|imss@"
    r"|antivirus|ndr@|mail ?system",
    re.IGNORECASE,
)
_SUBJECT_RE = re.compile(
    r"undeliver|deliver(?:y|ed)? (?:failure|failed|status|problem|report|notification|error)"
    r"|delivery status|returned mail|mail (?:delivery|not delivered|error|system error|failed)"
    r"|failure notice|non[- ]?delivery|non remis|could not be delivered|delayed mail"
    r"|message delayed|failed mail|nondeliverable|undelivered|processing error"
    r"|automatically rejected|delivery warning|warning: message",
    re.IGNORECASE,
)
_TEXT_RE = re.compile(
    r"could not be delivered|couldn'?t be delivered|undeliverable|undelivered"
    r"|delivery (?:has )?failed|failed permanently|permanent (?:fatal )?error"
    r"|not (?:been )?delivered"
    r"|unable to deliver|did not reach|could not deliver|cannot be delivered"
    r"|(?:wasn'?t|not) able to deliver|delivery failure|returned to sender"
    r"|following address(?:\(?es\)?)? failed|not yet been delivered|delivery problem"
    r"|did not receive|encountered delivery problems|no valid recipients|could not be reached"
    r"|was automatically rejected|were not able to deliver",
    re.IGNORECASE,
)
_AUTOREPLY_SUBJECT_RE = re.compile(
    r"out of (?:the )?office|auto(?:matic)?[ -]?(?:reply|response|responder)|^\s*auto:"
    r"|\bvacation\b|\babwesend|\babsence\b|autoreply|\booo\b|away from (?:my|the) (?:office|desk)",
    re.IGNORECASE,
)
_MSGID_RE = re.compile(r"^\s*message-id:\s*<([^>\s]{1,500})>", re.IGNORECASE | re.MULTILINE)


def parse_bounce(raw: bytes, limits: ParseLimits = DEFAULT_LIMITS) -> BounceReport | None:
    """Parse one inbound message; ``None`` when it is not a bounce or complaint.

    Never raises: hostile or broken input gives ``None`` (or what could be read of it).
    """
    try:
        return _parse(raw, limits, nested=False)
    except RecursionError:
        return _parse_flat(raw, limits)
    except Exception:
        return None


def _parse_flat(raw: bytes, limits: ParseLimits) -> BounceReport | None:
    """Fallback for structure the email package cannot walk (e.g. absurd nesting)."""
    try:
        head, _, body = raw[: limits.max_bytes].partition(b"\n\n")
        msg = mime.parse_message(head[: limits.max_header_bytes] + b"\n\n")
        notice = body[: limits.max_text].decode("latin-1")
        return _from_text(msg, notice, "", limits)
    except Exception:
        return None


def _parse(raw: bytes, limits: ParseLimits, nested: bool) -> BounceReport | None:
    msg = mime.parse_message(mime.sanitize(raw, limits))
    dsn_texts: list[str] = []
    arf_texts: list[str] = []
    notice_parts: list[str] = []
    original: mime.Message | None = None
    originals: list[mime.Message] = []
    wrapped: list[mime.Message] = []
    for part in mime.walk(msg, limits):
        if part.content_type in DSN_TYPES:
            dsn_texts.append(mime.part_bytes(part.message, limits).decode("utf-8", "replace"))
        elif part.content_type == "message/feedback-report":
            arf_texts.append(mime.part_bytes(part.message, limits).decode("utf-8", "replace"))
        elif part.content_type.startswith(("message/rfc822", "text/rfc822")):
            inner = _inner(part.message)
            if inner is not None and len(originals) < 50:
                originals.append(inner)
            if original is None:
                original = inner
                if original is not None and original.get_content_type() == "multipart/report":
                    wrapped.append(original)
        elif part.content_type in ("text/plain", "text/html") and not part.after_original:
            notice_parts.append(mime.part_text(part.message, limits))
    notice = "\n".join(notice_parts)[: limits.max_text]
    orig_id = _original_message_id(original, notice)

    if arf_texts or complaint.is_jmrp(msg, originals):
        return complaint.parse(arf_texts, originals, orig_id, limits.max_recipients)
    if dsn_texts:
        got = _from_dsn(msg, dsn_texts, notice, orig_id, limits)
        if got is not None and got.recipients:
            return got
    if wrapped and not nested:
        # A gateway that wraps the real report in message/rfc822 (seen from mail filters).
        unwrapped = _parse(wrapped[0].as_bytes(), limits, nested=True)
        if unwrapped is not None:
            return unwrapped
    if not dsn_texts and _is_autoreply(msg):
        return None
    return _from_text(msg, notice, orig_id or "", limits, has_dsn=bool(dsn_texts))


def _inner(part: mime.Message) -> mime.Message | None:
    payload = part.get_payload()
    if isinstance(payload, list) and payload and isinstance(payload[0], mime.Message):
        return payload[0]
    if isinstance(payload, str):
        try:
            return mime.parse_message(payload.encode("latin-1", "replace"))
        except Exception:
            return None
    return None


def _original_message_id(original: mime.Message | None, notice: str) -> str | None:
    if original is not None:
        value = mime.header(original, "Message-ID", 600).strip()
        m = re.search(r"<([^>\s]{1,500})>", value)
        if m:
            return m.group(1)
        if value and " " not in value:
            return value
    m = _MSGID_RE.search(notice)
    return m.group(1) if m else None


def _context_lines(notice: str, address: str) -> str:
    """Notice lines mentioning ``address`` and the few after each (per-recipient detail)."""
    lines = notice.splitlines()
    low = address.lower()
    out: list[str] = []
    for i, line in enumerate(lines):
        if low in line.lower():
            out.extend(lines[i : i + 5])
            if len(out) > 40:
                break
    return "\n".join(out)


def _action(value: str, status: str | None) -> str:
    word = value.strip().lower().split(" ", 1)[0] if value.strip() else ""
    if word in ("failed", "failure", "error", "fail"):
        return "failed"
    if word in ("delayed", "delay", "deferred"):
        return "delayed"
    if word in ("delivered", "relayed", "expanded"):
        return "delivered"
    if status and status.startswith("4"):
        return "delayed" if word else "failed"
    return "failed"


def _from_dsn(
    msg: mime.Message, dsn_texts: list[str], notice: str, orig_id: str | None, limits: ParseLimits
) -> BounceReport | None:
    per_message: dict[str, str] = {}
    records: list[report.DsnRecord] = []
    for t in dsn_texts:
        pm, recs = report.delivery_status(t)
        for k, v in pm.items():
            per_message.setdefault(k, v)
        records.extend(recs)
    out: list[ParsedRecipient] = []
    seen: set[str] = set()
    for rec in records[: limits.max_recipients]:
        addr = report.address_of(rec.get("original-recipient")) or report.address_of(
            rec.get("final-recipient")
        )
        if not addr or addr.lower() in seen:
            continue
        seen.add(addr.lower())
        status_field = rec.get("status")
        diag = report.diagnostic_text(rec.get("diagnostic-code"))
        m = STATUS_RE.search(status_field)
        stated = ".".join(m.groups()) if m else None
        status_words = STATUS_RE.sub("", status_field).strip(" ()")
        detail = " ".join(x for x in (diag, status_words) if x)
        if stated is None or is_generic(stated) or not diag:
            detail = f"{detail}\n{_context_lines(notice, addr)}".strip()
        code = text.reply_code(detail)
        action = _action(rec.get("action"), stated or (str(code) if code else None))
        out.append(
            _recipient(
                addr,
                action,
                stated,
                code,
                detail,
                diag or status_words,
                report.mta_name(rec.get("remote-mta")) or text.remote_host(detail),
            )
        )
    if not out:
        return None
    return BounceReport(
        recipients=tuple(out),
        original_message_id=orig_id,
        reporting_mta=report.mta_name(per_message.get("reporting-mta", "")),
    )


def _recipient(
    addr: str,
    action: str,
    stated: str | None,
    code: int | None,
    detail: str,
    diagnostic: str,
    remote_mta: str | None,
) -> ParsedRecipient:
    classifier = default_classifier()
    hint = 4 if action == "delayed" else None
    status = best_status(stated, detail[:4096])
    reason = classifier.reason_of(code, status, detail)
    klass = int(status[0]) if status else (code // 100 if code else hint)
    if action == "failed" and klass == 4 and reason in ("undefined", "systemerror"):
        reason = "expired"  # a temporary failure the reporting MTA gave up on
    if status is None:
        if code is not None:
            status = f"{code // 100}.0.0"
        else:
            status = classifier.default_status(reason, hint)
    v = classifier.verdict(reason, status)
    return ParsedRecipient(
        recipient=addr,
        action=action,
        status=status,
        reply_code=code,
        diagnostic=" ".join(diagnostic.split())[:1000],
        remote_mta=remote_mta,
        category=v.category,
        kind=v.kind,
        reason=reason,
    )


def _is_autoreply(msg: mime.Message) -> bool:
    sender = mime.header(msg, "From")
    if _SENDER_RE.search(sender):
        return False
    auto = mime.header(msg, "Auto-Submitted").lower()
    if auto.startswith("auto-replied") or auto.startswith("auto-generated"):
        return True
    if any(msg.get(h) is not None for h in ("X-Autoreply", "X-Autorespond", "X-Autoresponder")):
        return True
    if mime.header(msg, "Precedence").lower().strip() == "auto_reply":
        return True
    return bool(_AUTOREPLY_SUBJECT_RE.search(mime.header(msg, "Subject")))


def _looks_like_bounce(msg: mime.Message, notice: str) -> bool:
    if msg.get("X-Failed-Recipients") is not None:
        return True
    if _SENDER_RE.search(mime.header(msg, "From")):
        return True
    if not _SUBJECT_RE.search(mime.header(msg, "Subject")):
        return False
    head = notice[:8192]
    if _TEXT_RE.search(head):
        return True
    return default_classifier().reason_of(None, None, head) in _HARD_TEXT_REASONS


def _own_addresses(msg: mime.Message) -> frozenset[str]:
    out: set[str] = set()
    for name in ("To", "From", "Return-Path", "Delivered-To", "Envelope-To"):
        out.update(a.lower() for a in text.ADDR_RE.findall(mime.header(msg, name)))
    return frozenset(out)


def _from_text(
    msg: mime.Message, notice: str, orig_id: str, limits: ParseLimits, has_dsn: bool = False
) -> BounceReport | None:
    if not has_dsn and not _looks_like_bounce(msg, notice):
        return None
    body = text.cut_original(notice)
    ignore = _own_addresses(msg)
    found = text.find_recipients(body, ignore, limits.max_recipients)
    failed_hdr = [a for a in text.ADDR_RE.findall(mime.header(msg, "X-Failed-Recipients", 4000))]
    known = {f.address.lower() for f in found} | {f.alias.lower() for f in found if f.alias}
    for a in failed_hdr:
        if a.lower() not in known:
            found.append(text.Found(a, 0, [body[:2000]]))
            known.add(a.lower())
    if not found:
        found = [text.Found(a, 0, [body[:2000]]) for a in text.to_lines(body, ignore)[:1]]
    delayed = bool(text.DELAY_RE.search(body[:8192]))
    action = "delayed" if delayed else "failed"
    out = []
    for f in found:
        detail = "\n".join(f.context)
        code = text.reply_code(detail)
        stated = best_status(None, detail)
        probe = default_classifier().reason_of(code, stated, detail)
        if probe == "undefined" and code is None and stated is None:
            detail = f"{detail}\n{body[:3000]}"
            code = text.reply_code(detail)
        out.append(
            _recipient(f.address, action, None, code, detail, detail, text.remote_host(detail))
        )
    if not out and not has_dsn and not _TEXT_RE.search(body):
        return None
    return BounceReport(recipients=tuple(out), original_message_id=orig_id or None)
