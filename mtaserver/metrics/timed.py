"""A delivery agent wrapper that reports each attempt's duration to metrics."""

from __future__ import annotations

from collections.abc import Callable

from mtaserver.metrics.ports import Agent
from mtaserver.model import DeliveryJob, DeliveryReport, RoutePolicy


class TimedAgent:
    """Wraps a delivery agent to report each attempt's duration; adds nothing else."""

    def __init__(self, agent: Agent, observe: Callable[[float], None]) -> None:
        self._agent = agent
        self._observe = observe

    async def deliver(self, job: DeliveryJob, policy: RoutePolicy) -> DeliveryReport:
        report = await self._agent.deliver(job, policy)
        self._observe(report.finished_at - report.started_at)
        return report
