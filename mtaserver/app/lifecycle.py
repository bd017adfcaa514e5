"""The daemon's lifecycle: one database, the wired services, signals, drain, reload.

Lifecycle: SIGTERM/SIGINT → STOPPING=1, every service drains (bounded by
``server.drain_timeout``), tasks are cancelled, leases released, the database closed, exit 0.
SIGHUP → RELOADING=1, the config file is re-read; a bad file is logged and the old config
kept; otherwise each service reloads (TLS certificates, DKIM keys, limits), then READY=1.
What is built, and from what, is :mod:`mtaserver.app.wiring`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import gc
import os
import signal
from collections.abc import Awaitable, Iterator, Sequence
from pathlib import Path
from typing import cast

import uvloop

from mtaserver.app.service import Service
from mtaserver.app.wiring import Base, Wiring, wire
from mtaserver.clock import Clock, SystemClock
from mtaserver.config import Config
from mtaserver.config.restart import keep_restart_keys
from mtaserver.crypto import codec_for
from mtaserver.diskspace import FreeSpace, Reserve
from mtaserver.errors import ConfigError, MtaError, StorageError
from mtaserver.keyfiles import load_checked
from mtaserver.log import get_logger, kv, set_level, setup_logging
from mtaserver.notify import Notifier
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.queue import Spool
from mtaserver.supervisor import first_fatal, supervise
from mtaserver.workers.pool import Listening
from mtaserver.workers.template import Template

log = get_logger("app")


class App:
    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        notifier: Notifier | None = None,
        template: Template | None = None,
    ):
        self.config = config
        self.template = template  # forks the workers (see serve)
        self.clock = clock or SystemClock()
        self.notifier = notifier or Notifier()
        self._stop = asyncio.Event()
        self._reload = asyncio.Event()

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload.set()

    async def run(self) -> None:
        cfg = self.config
        if cfg.storage.backend == "postgresql":
            from mtaserver.app.pgwiring import node_id  # asyncpg and co.: PostgreSQL nodes only

            # Several nodes share the database; one process per node id on this host.
            with _exclusive(cfg.server.data_dir / f"node-{node_id(cfg)}.lock"):
                await self._run_with_pg(cfg)
            return
        with _exclusive(cfg.storage.database.with_suffix(".lock")):
            await self._run_with_db(cfg)

    async def _run_with_pg(self, cfg: Config) -> None:
        from mtaserver.app.pgwiring import node_id, wire_postgres  # not loaded on SQLite
        from mtaserver.storage.postgres.db import PgDatabase
        from mtaserver.storage.postgres.queue import PgQueue

        assert cfg.storage.postgres is not None  # config: backend = "postgresql" sets it
        db = PgDatabase(cfg.storage.postgres)
        applied = await db.open()
        log.info(kv(event="postgresql_open", node=node_id(cfg), migrations=len(applied)))
        try:
            queue = PgQueue(
                db, node_id(cfg), codec_for(cfg.storage.encryption_key_file),
                keep_bodies=cfg.retention.bodies, clock=self.clock,
            )  # fmt: skip
            spool = cast(Spool, queue)  # releases only this node's leases (same method)
            await _release_leases(spool, self.clock, "leases_released_at_start")
            wiring = wire_postgres(
                cfg, db, queue, self.clock, lambda: self.config, template=self.template
            )
            await self._run_services(wiring, spool)
        finally:
            await db.close()
            log.info(kv(event="stopped"))

    async def _run_with_db(self, cfg: Config) -> None:
        db = Database(cfg.storage.database, owner=True)
        reserve = Reserve(cfg.storage.database.parent / "reserve.bin")
        try:
            await db.open()
        except StorageError as exc:
            if exc.fatal or not reserve.release():
                raise
            await db.open()  # the space the reserve held is enough to open it (SQLite's -shm)
        try:
            spool = Spool(
                db,
                codec_for(cfg.storage.encryption_key_file),
                keep_bodies=cfg.retention.bodies,
                clock=self.clock,
            )
            await _release_leases(spool, self.clock, "leases_released_at_start")
            space = FreeSpace(
                cfg.storage.database.parent, cfg.storage.min_free, self.clock.monotonic
            )
            base = Base(db, spool, self.clock, space, reserve, self.template)
            await self._run_services(wire(cfg, base, lambda: self.config), spool)
        finally:
            await db.close()
            log.info(kv(event="stopped"))

    async def _run_services(self, wiring: Wiring, spool: Spool) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.request_stop)
        loop.add_signal_handler(signal.SIGINT, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        started: list[Service] = []
        try:
            for service in wiring.services:
                await service.start()
                started.append(service)
            restarted = wiring.metrics.task_restarted
            clock = self.clock.monotonic
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(
                        supervise(s.name, s.run, monotonic=clock, on_restart=restarted), name=s.name
                    )
                    for s in started
                ]
                # What start-up built lives as long as the daemon: moved out of the
                # collector's generations, full collections stop re-scanning it (they
                # paused requests for 20-140 ms otherwise).
                gc.freeze()
                self.notifier.ready()
                log.info(kv(event="ready", services=",".join(s.name for s in started)))
                await self._supervise(wiring.services)
                # Listeners closed first (in every worker process too), so that once systemd
                # sees STOPPING=1 no new connection is taken; then the drain.
                await asyncio.gather(
                    *(_bounded(s.stop_accepting(), 5.0, s.name)
                      for s in started if isinstance(s, Listening))
                )  # fmt: skip
                self.notifier.stopping()
                log.info(kv(event="stopping"))
                timeout = self.config.server.drain_timeout
                await asyncio.gather(
                    *(_bounded(s.drain(timeout), timeout, s.name) for s in reversed(started))
                )
                for task in tasks:
                    task.cancel()
            released = await _release_leases(spool, self.clock, None)
            log.info(kv(event="drained", leases_released=released))
        except BaseExceptionGroup as group:
            fatal = first_fatal(group)
            if fatal is None:
                raise
            raise fatal from None  # one line (event=fatal), not an exception-group traceback
        finally:
            # A second SIGTERM while the database closes only repeats the request; the
            # handlers go when the loop closes, after the last write.
            self._stop.set()

    async def _supervise(self, services: Sequence[Service]) -> None:
        """Wait for stop, handling reloads meanwhile."""
        while not self._stop.is_set():
            stop = asyncio.create_task(self._stop.wait())
            reload = asyncio.create_task(self._reload.wait())
            await asyncio.wait({stop, reload}, return_when=asyncio.FIRST_COMPLETED)
            for t in (stop, reload):
                t.cancel()
            if self._reload.is_set() and not self._stop.is_set():
                self._reload.clear()
                await self._do_reload(services)

    async def _do_reload(self, services: Sequence[Service]) -> None:
        self.notifier.reloading()
        try:
            new = await asyncio.to_thread(load_checked, self.config.source)
        except ConfigError as exc:
            log.error(kv(event="reload_rejected", error=str(exc)))
            self.notifier.ready()
            return
        new, restart_only = keep_restart_keys(self.config, new)
        for key in restart_only:
            log.warning(kv(event="reload_needs_restart", key=key))
        set_level(new.server.log_level)
        for service in services:
            try:
                await service.reload(new)
            except (MtaError, OSError, ValueError) as exc:
                log.error(kv(event="reload_failed", service=service.name, error=str(exc)))
        self.config = new
        log.info(kv(event="reloaded", source=new.source))
        self.notifier.ready()


async def _release_leases(spool: Spool, clock: Clock, event: str | None) -> int:
    """Put leased recipients back; on a full disk, log and go on (leases expire anyway)."""
    try:
        released = await spool.release_leases(clock.now())
    except StorageError as exc:
        if exc.fatal:
            raise
        log.warning(kv(event="leases_not_released", error=str(exc)))
        return 0
    if released and event:
        log.info(kv(event=event, recipients=released))
    return released


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """One daemon per database: a second one on the same file refuses to start."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MtaError(
                f"{path}: another mtaserver is already running on this database"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)


async def _bounded(aw: Awaitable[None], timeout: float, name: str) -> None:
    try:
        await asyncio.wait_for(aw, timeout)
    except TimeoutError:
        log.warning(kv(event="drain_timeout", service=name, seconds=timeout))
    except Exception as exc:
        log.error(kv(event="drain_failed", service=name, error=type(exc).__name__))


def serve(config: Config) -> int:
    """Run the daemon until SIGTERM; returns the exit code."""
    setup_logging(config.server.log_level)
    # Workers fork from a copy of this process made now, before the loop, threads and the
    # database exist: they share its imported modules' pages (mtaserver.workers.template).
    # On PostgreSQL too: asyncpg is imported before, each worker's pool opened after its fork.
    pg = config.storage.backend == "postgresql"
    template = Template.fork(postgres=pg) if config.server.workers > 1 else None
    app = App(config, template=template)
    try:
        uvloop.run(app.run())
    except MtaError as exc:
        log.error(kv(event="fatal", error=str(exc)))
        return 1
    return 0
