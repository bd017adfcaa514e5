"""Keeps each service's long-lived body running: a failure is logged, counted and restarted.

A background write that fails — the disk is full, the database is busy, a bug in one stage —
must not end the daemon: the other services go on answering (submission says 452 while the
disk is full), and the failed one comes back after a back-off that doubles up to a ceiling
and starts over once it has run for a while (a full disk is retried every few seconds, so
delivery resumes soon after space comes back). Only a failure the daemon cannot outlive
(``StorageError.fatal``: the database file corrupt, gone or replaced) passes through and
ends the process, which is what systemd's ``Restart=on-failure`` is for.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from mtaserver.errors import StorageError
from mtaserver.log import get_logger, kv

log = get_logger("supervisor")


@dataclass(frozen=True, slots=True)
class Backoff:
    initial: float = 1.0  # seconds before the first restart
    maximum: float = 60.0  # ceiling of the doubling
    reset_after: float = 60.0  # a body that ran this long before failing starts over at initial
    # A full disk is retried at least this often: one failed write is cheap, and delivery
    # should resume within seconds of space coming back, not after a minute of back-off.
    full_maximum: float = 5.0


def is_fatal(exc: BaseException) -> bool:
    return isinstance(exc, StorageError) and exc.fatal


async def supervise(
    name: str,
    body: Callable[[], Awaitable[None]],
    *,
    monotonic: Callable[[], float],
    on_restart: Callable[[str], None] = lambda name: None,
    backoff: Backoff = Backoff(),
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Run ``body`` until it returns; restart it when it raises (fatal errors excepted)."""
    delay = backoff.initial
    restarts = 0
    while True:
        started = monotonic()
        try:
            await body()
            return
        except Exception as exc:
            if is_fatal(exc):
                raise
            if monotonic() - started >= backoff.reset_after:
                delay = backoff.initial
            if isinstance(exc, StorageError) and exc.full:
                delay = min(delay, backoff.full_maximum)
            restarts += 1
            on_restart(name)
            log.error(kv(event="service_failed", service=name,
                         error=f"{type(exc).__name__}: {exc}", restart_in=delay,
                         restarts=restarts))  # fmt: skip
            log.debug(kv(event="service_failed_detail", service=name), exc_info=exc)
        await sleep(delay)
        delay = min(backoff.maximum, delay * 2)
        log.info(kv(event="service_restarted", service=name, restarts=restarts))


def first_fatal(exc: BaseException) -> BaseException | None:
    """The fatal error inside a (nested) exception group from the service TaskGroup."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = first_fatal(inner)
            if found is not None:
                return found
        return None
    return exc if is_fatal(exc) else None
