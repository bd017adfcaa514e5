"""Inbound bounce and complaint parsing (RFC 3464, RFC 5965 and free-form notices).

Every reported recipient is a :class:`ParsedRecipient` with a ``reason`` (sisimai's
taxonomy, see :mod:`mtaserver.classify`) and its kind: ``hard`` only for a dead address or
domain, ``feedback`` for a complaint, ``soft`` otherwise. ``parse_bounce`` is pure and
synchronous; ``parse_bounce_async`` runs it in a worker thread
with a timeout so hostile input can never stall the event loop.
"""

from __future__ import annotations

import asyncio
import functools

from mtaserver.dsn.limits import DEFAULT_LIMITS, ParseLimits
from mtaserver.dsn.parse import parse_bounce
from mtaserver.dsn.recipient import ParsedRecipient, reason_kind_of, reason_of
from mtaserver.model import BounceReport

__all__ = [
    "DEFAULT_LIMITS",
    "ParseLimits",
    "ParseTimeout",
    "ParsedRecipient",
    "parse_bounce",
    "parse_bounce_async",
    "reason_kind_of",
    "reason_of",
]


class ParseTimeout(Exception):
    """The parser did not finish within its time budget."""


async def parse_bounce_async(
    raw: bytes, timeout: float = 5.0, limits: ParseLimits = DEFAULT_LIMITS
) -> BounceReport | None:
    """``parse_bounce`` off the event loop; raises ``ParseTimeout`` past ``timeout`` seconds.

    The worker thread cannot be killed, but the limits bound its work, and the caller stops
    waiting (the session answers and moves on).
    """
    loop = asyncio.get_running_loop()
    fut = loop.run_in_executor(None, functools.partial(parse_bounce, raw, limits))
    try:
        return await asyncio.wait_for(fut, timeout)
    except TimeoutError as exc:
        raise ParseTimeout(f"bounce parse exceeded {timeout}s") from exc
