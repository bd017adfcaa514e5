"""The owner's side of the process model: N submission workers, their links, their lives.

With ``[server] workers = N`` (N > 1) the owner — the daemon with the database writer,
scheduler, delivery, inbound, tracking, admin and API — does not bind the submission
listeners. It starts N worker processes (:mod:`mtaserver.workers.child`), each with one
end of a socketpair — forked by the template (:mod:`mtaserver.workers.template`, split off
the owner before its loop, so they share its imported pages), or, without one, a fresh
interpreter each — and as a :class:`Service`:

* ``start`` spawns them and returns once every one reported READY (so the daemon's one
  READY=1 comes after all are listening); a worker that dies before that fails the start;
* ``run`` restarts a worker that died (kill -9, crash) with the supervisor's back-off;
* each ENQUEUE frame is checked against the per-user rate (the owner's buckets, shared
  with the HTTP API) and committed with ``Spool.enqueue`` — concurrent frames from all
  workers share one group commit — then acked; the worker answers 250 after the ack;
* THROTTLE frames ask the daemon's one AUTH failure count (``AuthThrottle``), and the
  per-IP connection counts live in a shared table (:mod:`mtaserver.workers.conncap`) the
  owner creates and clears for a worker that died — so both limits hold for the daemon;
* ``reload`` forwards SIGHUP and waits until each worker has answered: applied, or failed
  and kept its previous config whole (reported, and the next SIGHUP is tried again);
* ``stop_accepting`` sends SIGTERM and returns once every worker has closed its listeners
  (the daemon says STOPPING=1 after it); ``drain`` waits for the workers to finish their
  transactions (the database stays open until every drain is done).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from mtaserver.auth import AuthThrottle
from mtaserver.clock import Clock
from mtaserver.config import Config
from mtaserver.errors import MtaError, StorageError
from mtaserver.log import get_logger, kv
from mtaserver.model import PreparedMessage
from mtaserver.prepare import PrepareError
from mtaserver.supervisor import Backoff
from mtaserver.workers import conncap, frames
from mtaserver.workers.frames import Frame, FrameError
from mtaserver.workers.template import ForkedWorker, Template

log = get_logger("workers")

READY_TIMEOUT = 60.0  # how long a SIGHUP'd worker may take to answer
RATE_LIMITED = "451 4.7.1 Message rate limit exceeded, try again later"


class Spool(Protocol):
    async def enqueue(self, msg: PreparedMessage) -> None: ...


class Limiter(Protocol):
    def take(self, key: str) -> bool: ...


class Observer(Protocol):
    def session_started(self, listener: str) -> None: ...

    def auth_failed(self, listener: str) -> None: ...

    def recipient_refused(self, reason: str) -> None: ...


@runtime_checkable
class Listening(Protocol):
    """A service whose listeners close before STOPPING=1 (then it drains)."""

    async def stop_accepting(self) -> None: ...


class _Slot:
    """One worker position: its current process, link and readiness."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.proc: asyncio.subprocess.Process | ForkedWorker | None = None
        self.ready = asyncio.Event()
        self.served: asyncio.Task[None] | None = None
        self.started = 0.0
        self.reloaded: asyncio.Future[dict[str, object]] | None = None  # its SIGHUP's answer
        self.closed = asyncio.Event()  # its listeners are closed (stopping)


class WorkerPool:
    name = "workers"

    def __init__(
        self,
        cfg: Config,
        *,
        spool: Spool,
        user_rate: Callable[[], Limiter | None],
        observer: Observer | None,
        clock: Clock,
        on_restart: Callable[[str], None] = lambda name: None,
        backoff: Backoff | None = None,
        template: Template | None = None,
    ) -> None:
        self.cfg = cfg
        self.count = cfg.server.workers
        self._spool = spool
        self._user_rate = user_rate
        self._observer = observer
        self._clock = clock
        self._on_restart = on_restart
        self._backoff = backoff or Backoff()
        self._slots = [_Slot(i) for i in range(self.count)]
        self._stopping = False
        self._throttle = AuthThrottle(cfg.submission.auth, clock)  # AUTH failures, all workers
        self._conncap_fd = -1  # the shared per-IP connection table (created at start)
        self._template = template  # forks workers sharing the owner's pages; else exec

    # -- Service -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._conncap_fd < 0:
            self._conncap_fd = conncap.create(self.count)
        for slot in self._slots:
            await self._spawn(slot)
        try:
            for slot in self._slots:
                await self._wait_ready(slot)
        except BaseException:
            await self.drain(5.0)
            raise
        log.info(kv(event="workers_ready", workers=self.count,
                    pids=",".join(str(s.proc.pid) for s in self._slots if s.proc)))  # fmt: skip

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for slot in self._slots:
                tg.create_task(self._keep(slot), name=f"worker-{slot.index}")

    async def stop_accepting(self) -> None:
        """SIGTERM to every worker; returns once each has closed its listeners (or exited)."""
        self._stopping = True
        live = [s for s in self._slots if s.proc is not None and s.proc.returncode is None]
        for slot in live:
            assert slot.proc is not None
            with contextlib.suppress(ProcessLookupError):
                slot.proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*(self._closed(slot) for slot in live))

    async def _closed(self, slot: _Slot) -> None:
        assert slot.proc is not None
        closed = asyncio.ensure_future(slot.closed.wait())
        exited = asyncio.ensure_future(slot.proc.wait())
        waits: set[asyncio.Future[object]] = {closed, exited}  # type: ignore[arg-type]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
            exited.cancel()

    async def drain(self, timeout: float) -> None:
        self._stopping = True
        procs = [s.proc for s in self._slots if s.proc is not None and s.proc.returncode is None]
        for proc in procs:  # again: a worker started since stop_accepting's
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        # Each worker bounds its own drain by drain_timeout; one still running when the
        # daemon's drain ends (timeout, or cancelled by the lifecycle) is killed: what it
        # had not acknowledged the client sends again.
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), timeout)
        finally:
            for proc in procs:
                if proc.returncode is None:
                    log.warning(kv(event="worker_killed", pid=proc.pid, reason="drain_timeout"))
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
        await asyncio.gather(*(p.wait() for p in procs))
        for slot in self._slots:  # answers in flight were sent; the links can go
            if slot.served is not None:
                slot.served.cancel()
        log.info(kv(event="workers_stopped", workers=len(procs)))
        if self._template is not None:
            await self._template.close()
        if self._conncap_fd >= 0:
            os.close(self._conncap_fd)
            self._conncap_fd = -1

    async def reload(self, config: Config) -> None:
        """SIGHUP to every worker that is up; returns once each has answered (applied, or
        failed and kept its previous config) or died; raises naming those that failed."""
        if config.server.workers != self.count:
            log.warning(kv(event="reload_needs_restart", key="server.workers"))
        self.cfg = config
        self._throttle.settings = config.submission.auth
        # Only workers that are up: one still starting has no SIGHUP handler yet (the
        # signal would end it) and reads the new file anyway.
        live = [
            s
            for s in self._slots
            if s.proc is not None and s.proc.returncode is None and s.ready.is_set()
        ]
        loop = asyncio.get_running_loop()
        for slot in live:
            slot.reloaded = loop.create_future()
            assert slot.proc is not None
            with contextlib.suppress(ProcessLookupError):
                slot.proc.send_signal(signal.SIGHUP)
        answers = await asyncio.gather(*(self._reload_answer(slot) for slot in live))
        failed = [(slot.index, error) for slot, error in zip(live, answers, strict=True) if error]
        for index, error in failed:
            log.error(kv(event="worker_reload_failed", worker=index, error=error))
        if failed:
            raise MtaError(
                f"submission worker(s) {', '.join(str(i) for i, _ in failed)} kept their "
                f"previous config: {failed[0][1]}"
            )

    async def _reload_answer(self, slot: _Slot) -> str:
        """'' when the worker applied the reload; else why not (its error, death, silence)."""
        assert slot.proc is not None and slot.reloaded is not None
        answer = slot.reloaded
        exited = asyncio.ensure_future(slot.proc.wait())
        waits: set[asyncio.Future[object]] = {answer, exited}  # type: ignore[arg-type]
        try:
            await asyncio.wait(waits, timeout=READY_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            slot.reloaded = None
        if answer.done():
            result = answer.result()
            return "" if result.get("ok") is True else str(result.get("error") or "failed")
        answer.cancel()
        if slot.proc.returncode is not None:
            return f"exited with {slot.proc.returncode} during the reload"
        return f"no answer within {READY_TIMEOUT:g}s"

    # -- processes -----------------------------------------------------------------------
    async def _spawn(self, slot: _Slot) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}  # one READY=1
        env[conncap.FD_ENV] = str(self._conncap_fd)
        try:
            slot.proc = None
            if self._template is not None and self._template.alive:
                try:
                    slot.proc = await self._template.spawn(
                        slot.index, str(self.cfg.source), theirs.fileno(), self._conncap_fd
                    )
                except MtaError as exc:
                    log.error(kv(event="worker_fork_failed", worker=slot.index, error=str(exc)))
            if slot.proc is None:  # a fresh interpreter: no template, or it is gone
                slot.proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "mtaserver", "serve", "-c", str(self.cfg.source),
                    "--worker", str(slot.index), "--link-fd", str(theirs.fileno()),
                    pass_fds=(theirs.fileno(), self._conncap_fd), env=env,
                )  # fmt: skip
        finally:
            theirs.close()
        slot.ready.clear()
        slot.closed.clear()
        slot.started = self._clock.monotonic()
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        slot.served = asyncio.create_task(self._serve(slot, reader, writer))
        log.info(kv(event="worker_started", worker=slot.index, pid=slot.proc.pid))

    async def _wait_ready(self, slot: _Slot) -> None:
        """Until the worker reports READY; one that exits or hangs first is an MtaError,
        and one that hangs (a certificate on a stuck mount, a lock) is killed with -9."""
        assert slot.proc is not None
        timeout = self.cfg.server.worker_start_timeout
        ready = asyncio.create_task(slot.ready.wait())
        exited = asyncio.create_task(slot.proc.wait())
        await asyncio.wait({ready, exited}, timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
        ready.cancel()
        exited.cancel()
        if slot.ready.is_set():
            return
        code = slot.proc.returncode
        if code is None:
            log.error(kv(event="worker_start_timeout", worker=slot.index, pid=slot.proc.pid,
                         seconds=timeout))  # fmt: skip
            with contextlib.suppress(ProcessLookupError):
                slot.proc.kill()
        raise MtaError(
            f"submission worker {slot.index} "
            + (f"exited with {code}" if code is not None else
               f"did not report ready within {timeout:g}s (server.worker_start_timeout)")
            + " during start (see its log lines above)"
        )  # fmt: skip

    async def _keep(self, slot: _Slot) -> None:
        """Restart the worker whenever it dies, with a doubling back-off."""
        delay = self._backoff.initial
        restarts = 0
        while True:
            assert slot.proc is not None
            code = await slot.proc.wait()
            if self._stopping:
                return
            conncap.clear(self._conncap_fd, slot.index)  # its connections are gone with it
            if self._clock.monotonic() - slot.started >= self._backoff.reset_after:
                delay = self._backoff.initial
            restarts += 1
            self._on_restart(f"worker-{slot.index}")
            # 0: it drained on a SIGTERM that was not ours (systemd signals the whole
            # control group at stop; ours follows at once and ends this loop)
            (log.info if code == 0 else log.error)(
                kv(event="worker_exited" if code == 0 else "worker_died", worker=slot.index,
                   pid=slot.proc.pid, code=code, restart_in=delay, restarts=restarts)
            )  # fmt: skip
            await self._clock.sleep(delay)
            delay = min(self._backoff.maximum, delay * 2)
            if self._stopping:
                return
            await self._spawn(slot)
            try:
                await self._wait_ready(slot)
            except MtaError as exc:  # it exited, or hung and was killed: back to the wait
                log.error(kv(event="worker_restart_failed", worker=slot.index, error=str(exc)))
                continue
            log.info(kv(event="worker_restarted", worker=slot.index, pid=slot.proc.pid,
                        restarts=restarts))  # fmt: skip

    # -- the link ------------------------------------------------------------------------
    async def _serve(
        self, slot: _Slot, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Read the worker's frames; each ENQUEUE runs as its own task (group commit)."""
        tasks: set[asyncio.Task[None]] = set()
        try:
            while (frame := await frames.read_frame(reader)) is not None:
                if frame.kind == frames.ENQUEUE:
                    task = asyncio.create_task(self._enqueue(frame, writer))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                elif frame.kind == frames.READY:
                    slot.ready.set()
                elif frame.kind == frames.RELOADED:
                    self._reloaded(slot, frame.body)
                elif frame.kind == frames.CLOSED:
                    slot.closed.set()
                elif frame.kind == frames.OBSERVE:
                    self._observe(frame.body)
                elif frame.kind == frames.THROTTLE:
                    answer = self._throttle_answer(frame)
                    if answer is not None and not writer.is_closing():
                        writer.write(frames.pack(answer))
        except (FrameError, OSError) as exc:
            log.error(kv(event="worker_link_failed", worker=slot.index, error=str(exc)))
        finally:
            if tasks:  # let commits in flight finish (their answers may go nowhere)
                await asyncio.gather(*tasks, return_exceptions=True)
            writer.close()

    async def _enqueue(self, frame: Frame, writer: asyncio.StreamWriter) -> None:
        answer = Frame(frames.OK, frame.request)
        try:
            msg = frames.decode_message(frame.body)
            limiter = self._user_rate()
            if msg.user is not None and limiter is not None and not limiter.take(msg.user):
                log.info(kv(queue_id=msg.queue_id, event="rate_limited", user=msg.user,
                            client_ip=msg.client_ip))  # fmt: skip
                raise PrepareError(RATE_LIMITED)
            await self._spool.enqueue(msg)
        except PrepareError as exc:
            answer = _error(frame, "prepare", exc.reply)
        except StorageError as exc:
            answer = _error(frame, "full" if exc.full else "storage", "")
        except Exception as exc:  # FrameError, a bug: the worker answers 451
            log.error(kv(event="worker_enqueue_failed", error=type(exc).__name__))
            answer = _error(frame, "storage", "")
        if not writer.is_closing():
            writer.write(frames.pack(answer))
            with contextlib.suppress(ConnectionError):
                await writer.drain()

    def _throttle_answer(self, frame: Frame) -> Frame | None:
        """The daemon-wide AUTH failure count: locked? / a failure (its delay) / a success."""
        try:
            op, ip, user = frames.decode_json(frame.body)
            ip, user = str(ip), None if user is None else str(user)
        except (FrameError, ValueError, TypeError):
            return _error(frame, "storage", "") if frame.request else None
        result: bool | float | None = None
        if op == "locked":
            result = self._throttle.locked(ip, user)
        elif op == "failed":
            result = self._throttle.failed(ip, user)
        elif op == "succeeded" and user is not None:
            self._throttle.succeeded(user)
        if not frame.request:
            return None
        return Frame(frames.OK, frame.request, frames.encode_json(result))

    def _reloaded(self, slot: _Slot, body: bytes) -> None:
        try:
            answer = frames.decode_json(body)
        except FrameError:
            answer = {"ok": False, "error": "unreadable answer"}
        if not isinstance(answer, dict):
            answer = {"ok": False, "error": "unreadable answer"}
        if slot.reloaded is not None and not slot.reloaded.done():
            slot.reloaded.set_result(answer)

    def _observe(self, body: bytes) -> None:
        if self._observer is None:
            return
        try:
            method, arg = frames.decode_json(body)
        except (FrameError, ValueError, TypeError):
            return
        if method in ("session_started", "auth_failed", "recipient_refused"):
            getattr(self._observer, method)(str(arg))


def _error(frame: Frame, kind: str, reply: str) -> Frame:
    return Frame(frames.ERR, frame.request, frames.encode_json({"kind": kind, "reply": reply}))
