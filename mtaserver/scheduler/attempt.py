"""One delivery attempt, bounded by its lease, and what a failed attempt reports."""

from __future__ import annotations

import asyncio
import dataclasses

from mtaserver.clock import Clock
from mtaserver.config.shaping import DestinationLimits
from mtaserver.log import get_logger, kv
from mtaserver.model import (
    DeliveryJob,
    DeliveryReport,
    Disposition,
    RecipientResult,
    RoutePolicy,
    SmtpReply,
)
from mtaserver.scheduler.ports import Agent

log = get_logger("scheduler")

RECORD_MARGIN = 0.05  # share of the lease left to record an attempt's outcome
BACKSTOP_MARGIN = 0.025  # share of the lease left when an agent that overran is cancelled


async def attempt(
    agent: Agent,
    job: DeliveryJob,
    route: RoutePolicy,
    limits: DestinationLimits,
    lease: float,
    clock: Clock,
) -> DeliveryReport:
    """Deliver `job` once; an agent that fails or overruns defers every recipient."""
    # An attempt ends before its lease does: past it the spool hands the recipients out
    # again, a second delivery could start while this one waits (e.g. for the reply to
    # the final dot), and this attempt's late result would overwrite that one's. The
    # agent stops at the deadline and reports what it already knows (a recipient
    # accepted in an earlier transaction stays delivered, so it is not sent twice);
    # the timeout here is only a backstop for an agent that overruns it.
    policy = dataclasses.replace(
        route,
        max_messages_per_connection=limits.max_messages_per_connection,
        tls=limits.tls or route.tls,
        deadline=job.lease_until - lease * RECORD_MARGIN,
    )
    budget = job.lease_until - clock.now() - lease * BACKSTOP_MARGIN
    try:
        async with asyncio.timeout(max(budget, 0.0)):
            return await agent.deliver(job, policy)
    except TimeoutError:
        log.warning(kv(event="attempt_past_lease", queue_id=job.queue_id))
        reply = SmtpReply(451, "delivery attempt cut short: it outlasted its lease", "4.4.2")
    except Exception:
        log.exception(kv(event="agent_failed", queue_id=job.queue_id))
        reply = SmtpReply(451, "local error in delivery", "4.3.0")
    now = clock.now()
    return DeliveryReport(
        job.queue_id,
        job.domain,
        tuple(
            RecipientResult(r.idx, r.address, Disposition.DEFERRED, reply) for r in job.recipients
        ),
        now,
        now,
    )


def connection_failed(report: DeliveryReport, codes: tuple[str, ...]) -> bool:
    """Whether every recipient was deferred with a connection-level status (no MX answered)."""
    return bool(report.results) and all(
        r.disposition is Disposition.DEFERRED and r.reply.enhanced in codes for r in report.results
    )
