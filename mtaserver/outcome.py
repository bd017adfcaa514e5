"""What one delivery attempt means for each of its recipients.

Pure policy, no I/O: a recipient's result (after the shaper's overrides) and the retry
settings give its new state, the event that records it, and — for a bounce — its line in
the DSN to the sender. The scheduler records these; tests can judge without a queue.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mtaserver.bouncegen import DsnRecipient
from mtaserver.config.shaping import RetrySettings
from mtaserver.log import get_logger, kv
from mtaserver.model import (
    Classification,
    DeliveryJob,
    Disposition,
    Event,
    RecipientResult,
    RecipientState,
    RecipientUpdate,
)
from mtaserver.retry import EXPIRED_STATUS, decide

log = get_logger("scheduler")

Classify = Callable[[int | None, str | None, str], Classification]


@dataclass(frozen=True, slots=True)
class Outcome:
    """One recipient's fate after policy."""

    update: RecipientUpdate
    event: Event
    dsn: DsnRecipient | None


def judge(
    retry: RetrySettings,
    classify: Classify,
    job: DeliveryJob,
    attempts: int,
    res: RecipientResult,
    disp: Disposition,
    now: float,
    suspended_until: float | None,
) -> Outcome:
    """One recipient's fate after an attempt: delivered; deferred with its next attempt;
    or bounced — synchronously (with the classified status) or because it expired."""
    reply = res.reply
    base: dict[str, str | int | float | bool | None] = {
        "mx": res.mx,
        "ip": res.ip,
        "tls": res.tls,
        "reply": str(reply),
    }
    delay = round(now - job.queued_since, 3)
    qid = job.queue_id
    if disp is Disposition.DELIVERED:
        base |= {"cipher": res.cipher, "delay": delay, "attempts": attempts}
        return Outcome(
            RecipientUpdate(qid, res.idx, RecipientState.DELIVERED, str(reply)),
            Event("delivered", now, qid, res.address, tuple(base.items())),
            None,
        )
    if disp is Disposition.DEFERRED:
        decision = decide(
            retry,
            attempts=attempts,
            received_at=job.queued_since,
            now=now,
            retry_after=res.retry_after,
            not_before=suspended_until,
        )
        if not decision.expired:
            cls = classify(reply.code, reply.enhanced, reply.text)
            base |= {
                "next_attempt": decision.next_attempt,
                "category": cls.category,
                "attempts": attempts,
            }
            return Outcome(
                RecipientUpdate(
                    qid,
                    res.idx,
                    RecipientState.QUEUED,
                    str(reply),
                    next_attempt=decision.next_attempt,
                ),
                Event("deferred", now, qid, res.address, tuple(base.items())),
                None,
            )
        status = EXPIRED_STATUS
        text = f"expired after {retry.max_lifetime / 86400:g} days in the queue"
        base |= {
            "source": "expired",
            "kind": "soft",
            "category": "expired",
            "status": status,
            "diagnostic": str(reply),
            "reply": f"{text}; last reply: {reply}",
        }
        return Outcome(
            RecipientUpdate(qid, res.idx, RecipientState.BOUNCED, f"{status} {text}: {reply}"),
            Event("bounced", now, qid, res.address, tuple(base.items())),
            DsnRecipient(
                res.address,
                status,
                diagnostic=str(reply),
                remote_mta=res.mx,
                last_attempt=now,
            ),
        )
    cls = classify(reply.code, reply.enhanced, reply.text)
    status = cls.status or reply.enhanced or ("5.0.0" if reply.code >= 500 else "4.0.0")
    if status.startswith("4"):
        status = "5" + status[1:]  # a forced bounce of a 4xx is a permanent failure now
    base |= {
        "source": "sync",
        "kind": cls.kind.value,
        "category": cls.category,
        "reason": getattr(cls, "reason", None),  # a Verdict's (classify.toml) reason
        "status": status,
        "attempts": attempts,
    }
    return Outcome(
        RecipientUpdate(qid, res.idx, RecipientState.BOUNCED, str(reply)),
        Event("bounced", now, qid, res.address, tuple(base.items())),
        DsnRecipient(
            res.address, status, diagnostic=str(reply), remote_mta=res.mx, last_attempt=now
        ),
    )


def log_attempt(
    job: DeliveryJob,
    res: RecipientResult,
    out: Outcome,
    now: float,
    rules: tuple[str, ...],
) -> None:
    """The one log line per recipient and attempt."""
    state = out.update.state
    status = {
        RecipientState.DELIVERED: "delivered",
        RecipientState.QUEUED: "deferred",
    }.get(state, "bounced")
    log.info(
        kv(
            queue_id=job.queue_id,
            rcpt=f"<{res.address}>",
            mx=res.mx,
            ip=res.ip,
            tls=res.tls,
            reply=str(res.reply),
            delay=f"{now - job.queued_since:.3f}s",
            status=status,
            next_attempt=round(out.update.next_attempt, 3) if out.update.next_attempt else None,
            rules=",".join(rules) or None,
        )
    )
