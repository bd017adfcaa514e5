"""Turn one delivery report into recipient updates, events and DSN work (pure).

The scheduler asks the shaper and the retry policy (:mod:`mtaserver.outcome`) about each
recipient of a finished attempt; this module sorts the answers into what is recorded now,
what waits for the message's single DSN, which recipients are due a delay warning, and
which permanent failures at delivery feed the suppression policy. Nothing is stored here
(each attempt is logged): the scheduler records the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from mtaserver.bouncegen import DsnRecipient
from mtaserver.config.shaping import RetrySettings
from mtaserver.model import (
    DeliveryJob,
    DeliveryReport,
    Disposition,
    Event,
    RecipientResult,
    RecipientState,
    RecipientUpdate,
    SmtpReply,
)
from mtaserver.outcome import Classify, judge, log_attempt
from mtaserver.retry import delay_warning_due
from mtaserver.scheduler.ports import SyncBounce


@dataclass(frozen=True, slots=True)
class Settled:
    """What one attempt changes, split by when it is recorded."""

    updates: tuple[RecipientUpdate, ...]  # recorded now, with `events`
    events: tuple[Event, ...]
    dsn_recipients: tuple[DsnRecipient, ...]  # held until the message's one DSN is sent
    dsn_updates: tuple[RecipientUpdate, ...]
    dsn_events: tuple[Event, ...]
    warn: tuple[DsnRecipient, ...]  # due a delay warning
    sync_bounces: tuple[SyncBounce, ...]  # bounced at delivery


def settle(
    job: DeliveryJob,
    report: DeliveryReport,
    overrides: Mapping[int, Disposition],
    *,
    retry: RetrySettings,
    classify: Classify,
    now: float,
    suspended_until: float | None,
    rules: tuple[str, ...],
    wants_dsn: bool,
    warned: bool,
) -> Settled:
    """Judge every recipient of `job`; a recipient missing from `report` is deferred."""
    by_idx = {r.idx: r for r in report.results}
    updates: list[RecipientUpdate] = []
    events: list[Event] = []
    dsn_recipients: list[DsnRecipient] = []
    dsn_updates: list[RecipientUpdate] = []
    dsn_events: list[Event] = []
    warn: list[DsnRecipient] = []
    sync_bounces: list[SyncBounce] = []
    sender_domain = job.sender.rpartition("@")[2].lower() or None
    for jr in job.recipients:
        res = by_idx.get(jr.idx) or RecipientResult(
            jr.idx,
            jr.address,
            Disposition.DEFERRED,
            SmtpReply(451, "no result from delivery", "4.3.0"),
        )
        disp = overrides.get(jr.idx, res.disposition)
        out = judge(retry, classify, job, jr.attempts + 1, res, disp, now, suspended_until)
        log_attempt(job, res, out, now, rules)
        facts = dict(out.event.data)
        if out.update.state is RecipientState.BOUNCED and facts.get("source") == "sync":
            reason = str(facts.get("reason") or facts.get("category") or "undefined")
            sync_bounces.append(
                SyncBounce(jr.address, reason, str(res.reply), job.queue_id, sender_domain)
            )
        if out.dsn is not None and wants_dsn:
            dsn_recipients.append(out.dsn)
            dsn_updates.append(out.update)
            dsn_events.append(out.event)
        else:
            updates.append(out.update)
            events.append(out.event)
        if (
            out.update.state is RecipientState.QUEUED
            and wants_dsn
            and delay_warning_due(retry, job.queued_since, now)
            and not warned
        ):
            warn.append(
                DsnRecipient(
                    jr.address,
                    res.reply.enhanced or "4.0.0",
                    diagnostic=str(res.reply),
                    remote_mta=res.mx,
                    last_attempt=now,
                    will_retry_until=job.queued_since + retry.max_lifetime,
                )
            )
    return Settled(
        tuple(updates),
        tuple(events),
        tuple(dsn_recipients),
        tuple(dsn_updates),
        tuple(dsn_events),
        tuple(warn),
        tuple(sync_bounces),
    )
