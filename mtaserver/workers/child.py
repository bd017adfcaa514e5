"""One submission worker process: SMTP sessions, AUTH, cleanup, tracking, DKIM — then the owner.

Started by the owner's :class:`~mtaserver.workers.pool.WorkerPool` as a fresh interpreter
(``mtaserver serve --worker N --link-fd FD``). It binds the submission listeners with
``SO_REUSEPORT`` (the kernel spreads connections over the workers), runs the existing
submission classes with a pipeline whose spool is :class:`OwnerLink`: the prepared, signed
message goes to the owner over the inherited socket, the owner commits it with its group
commit and acks, and only then does the session answer 250. No ack (owner gone, slow,
refused) → the handler's 451/452, never 250.

The worker reads users and suppressions from the database (WAL: it sees every committed
write; on PostgreSQL through its own small pool, :mod:`mtaserver.workers.pgchild`) and
never writes it. It exits when the owner's end of the link closes. Limits on
clients are the daemon's, not the worker's: AUTH failures are counted by the owner (over
the link), open connections per IP in the shared table of :mod:`mtaserver.workers.conncap`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import socket
import sys
from typing import TYPE_CHECKING

import uvloop

from mtaserver.auth import Authenticator, AuthThrottle
from mtaserver.clock import Clock, SystemClock
from mtaserver.config import Config
from mtaserver.config.restart import keep_restart_keys
from mtaserver.diskspace import FreeSpace
from mtaserver.dkim import DkimSigner
from mtaserver.dkim.keys import load_keyset
from mtaserver.errors import ConfigError, MtaError, StorageError
from mtaserver.keyfiles import load_checked
from mtaserver.log import get_logger, kv, set_level, setup_logging
from mtaserver.model import PreparedMessage
from mtaserver.pipeline import Pipeline, TrackingOptions
from mtaserver.prepare import PrepareError
from mtaserver.storage.sqlite.queue import new_queue_id
from mtaserver.storage.sqlite.users import UserStore
from mtaserver.submission import SubmissionHandler, SubmissionServer
from mtaserver.tracking.tokens import TokenCodec, load_secrets
from mtaserver.tracking.tracker import Tracker
from mtaserver.workers import conncap, frames
from mtaserver.workers.frames import Frame, FrameError
from mtaserver.workers.pgchild import WorkerStores, open_stores

if TYPE_CHECKING:
    from mtaserver.oauth import BearerAuthenticator

log = get_logger("worker")

# How long a session waits for the owner's commit before it answers 451. The owner's
# group commit answers in milliseconds; this is for an owner that is stuck, not slow.
ACK_TIMEOUT = 30.0
# How long a metric observation may wait for a frame to ride with (then it is sent alone).
OBSERVE_DELAY = 0.05
# How long an AUTH failure-count question to the owner may take before the worker's own
# count answers instead.
THROTTLE_TIMEOUT = 5.0


class OwnerLink:
    """The worker's end of the link: ``enqueue`` returns once the owner has committed.

    Many sessions share the one socket; each request has an id and its own future.
    Also the sessions' metrics observer, forwarded to the owner's /metrics.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        ack_timeout: float = ACK_TIMEOUT,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._ack_timeout = ack_timeout
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self.closed = asyncio.Event()
        # Metric observations wait here (≤ OBSERVE_DELAY) and ride along with the next frame:
        # a session's "started" costs no write of its own.
        self._observed: list[bytes] = []
        self._flush: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        """Read the owner's answers until the link closes; then fail what is waiting."""
        try:
            while (frame := await frames.read_frame(self._reader)) is not None:
                fut = self._pending.pop(frame.request, None)
                if fut is not None and not fut.done():
                    fut.set_result(frame)
        except (FrameError, OSError) as exc:
            log.error(kv(event="owner_link_failed", error=str(exc)))
        finally:
            self.closed.set()
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(StorageError("the owner process is unreachable"))
            self._pending.clear()

    def send(self, frame: Frame) -> None:
        if self.closed.is_set() or self._writer.is_closing():
            raise StorageError("the owner process is unreachable")
        if self._observed:
            self._writer.write(b"".join([*self._observed, frames.pack(frame)]))
            self._observed.clear()
        else:
            self._writer.write(frames.pack(frame))

    def _flush_observed(self) -> None:
        self._flush = None
        if self._observed and not self.closed.is_set() and not self._writer.is_closing():
            self._writer.write(b"".join(self._observed))
        self._observed.clear()

    async def request(self, kind: int, body: bytes, timeout: float, doing: str = "answer") -> Frame:
        """Send a frame and wait for the owner's answer to it (``doing``: for the error)."""
        request = next(self._ids)
        fut: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[request] = fut
        try:
            self.send(Frame(kind, request, body))
            await self._writer.drain()
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            raise StorageError(f"the owner did not {doing} within {timeout:g}s") from None
        except ConnectionError as exc:
            raise StorageError(f"the owner process is unreachable: {exc}") from None
        finally:
            self._pending.pop(request, None)

    async def enqueue(self, msg: PreparedMessage) -> None:
        body = frames.encode_message(msg)
        answer = await self.request(frames.ENQUEUE, body, self._ack_timeout, "commit")
        if answer.kind == frames.OK:
            return
        err = frames.decode_json(answer.body) if answer.kind == frames.ERR else {}
        reply = str(err.get("reply", ""))
        if err.get("kind") == "prepare" and reply[:1] in ("4", "5"):
            raise PrepareError(reply)  # e.g. the owner's per-user rate limit
        raise StorageError(f"the owner refused: {reply}", full=err.get("kind") == "full")

    def _observe(self, method: str, arg: str) -> None:
        if self.closed.is_set():
            return
        self._observed.append(
            frames.pack(Frame(frames.OBSERVE, 0, frames.encode_json([method, arg])))
        )
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(OBSERVE_DELAY, self._flush_observed)

    # SmtpObserver: counted in the owner, so /metrics is one set of numbers for the daemon.
    def session_started(self, listener: str) -> None:
        self._observe("session_started", listener)

    def auth_failed(self, listener: str) -> None:
        self._observe("auth_failed", listener)

    def recipient_refused(self, reason: str) -> None:
        self._observe("recipient_refused", reason)

    async def aclose(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
            self._flush_observed()
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


class OwnerThrottle:
    """The AUTH failure throttle, counted in the owner: one count for the whole daemon.

    A client's failures land on whichever worker the kernel picked for each connection;
    counted per worker, ``lockout_after`` would allow N times as many guesses. The worker
    keeps its own :class:`AuthThrottle` as well, which answers only when the owner does not
    (then the limit is per worker for that moment, never absent).
    """

    def __init__(self, link: OwnerLink, local: AuthThrottle) -> None:
        self._link = link
        self.local = local

    async def _ask(self, op: str, ip: str, user: str | None) -> object:
        body = frames.encode_json([op, ip, user])
        answer = await self._link.request(frames.THROTTLE, body, THROTTLE_TIMEOUT)
        if answer.kind != frames.OK:
            raise StorageError("the owner refused the question")
        return frames.decode_json(answer.body)

    async def locked(self, ip: str, user: str | None) -> bool:
        try:
            return bool(await self._ask("locked", ip, user))
        except (StorageError, FrameError) as exc:
            log.warning(kv(event="auth_throttle_local", error=str(exc)))
            return self.local.locked(ip, user)

    async def failed(self, ip: str, user: str | None) -> float:
        delay = self.local.failed(ip, user)
        try:
            answer = await self._ask("failed", ip, user)
            return float(answer) if isinstance(answer, int | float) else delay
        except (StorageError, FrameError) as exc:
            log.warning(kv(event="auth_throttle_local", error=str(exc)))
            return delay

    def succeeded(self, user: str) -> None:
        self.local.succeeded(user)
        with contextlib.suppress(StorageError):
            self._link.send(Frame(frames.THROTTLE, 0, frames.encode_json(["succeeded", "", user])))


def _connection_cap(cfg: Config, index: int) -> conncap.SharedConnectionCap | None:
    """The daemon-wide per-IP table the owner created, if it passed one."""
    fd = os.environ.get(conncap.FD_ENV)
    if fd is None or not fd.isdigit():
        return None
    workers = cfg.server.workers
    return conncap.SharedConnectionCap(
        int(fd), index, workers, cfg.submission.max_connections_per_ip
    )


def _tracker(cfg: Config) -> Tracker | None:
    """The tracking rewrite needs only the token secret (the owner created the file)."""
    t = cfg.tracking
    if t.base_url is None or t.secret_file is None:
        return None
    try:
        return Tracker(TokenCodec(load_secrets(t.secret_file)), t.base_url, t.unsubscribe_mailto)
    except ValueError as exc:
        raise ConfigError(f"tracking: {exc}") from None


def _bearer(cfg: Config, users: UserStore, clock: Clock) -> BearerAuthenticator | None:
    if not cfg.oauth.enabled:
        return None
    # Imported only when [oauth] is on: aiohttp and PyJWT are ~10 MiB of every worker.
    from mtaserver.oauth import BearerAuthenticator, TokenVerifier

    return BearerAuthenticator(TokenVerifier(cfg.oauth, clock), users)


class Worker:
    """The submission service of one worker process (see the module docstring)."""

    def __init__(
        self, cfg: Config, index: int, link: OwnerLink, stores: WorkerStores, clock: Clock
    ):
        self.cfg = cfg
        self.index = index
        self.link = link
        self.clock = clock
        self.users = stores.users  # SQLite read-only, or PostgreSQL (workers.pgchild)
        self.suppressions = stores.suppressions
        self.signer = DkimSigner(load_keyset(cfg.dkim), clock, inline=True)
        self.tracker = _tracker(cfg)
        self.space = FreeSpace(stores.data_dir, cfg.storage.min_free, clock.monotonic)
        self.authenticator = Authenticator(self.users, clock=clock)
        self.throttle = OwnerThrottle(link, AuthThrottle(cfg.submission.auth, clock))
        self.connections = _connection_cap(cfg, index)
        self.bearer = _bearer(cfg, self.users, clock)
        self.tls_context = cfg.tls.server_context() if cfg.tls.enabled else None
        self.server = SubmissionServer(
            cfg.submission,
            hostname=cfg.server.hostname,
            handler=self.handler_for(cfg),
            tls_context=self.tls_context,
            connections=self.connections,
        )

    def handler_for(self, cfg: Config) -> SubmissionHandler:
        """As ``app.mail.submission_service`` builds it, but the spool is the owner link
        and the per-user rate is the owner's (checked at enqueue, shared by all workers)."""
        sub = cfg.submission

        def defaults(user: str | None) -> TrackingOptions:
            d = cfg.tracking.defaults_for(user)
            return TrackingOptions(d.opens, d.clicks, d.unsubscribe)

        pipeline = Pipeline(
            spool=self.link,
            new_queue_id=new_queue_id,
            hostname=cfg.server.hostname,
            max_header_size=sub.max_header_size,
            max_mime_depth=sub.max_mime_depth,
            tracker=self.tracker,
            signer=self.signer,
            tracking_defaults=defaults,
        )
        return SubmissionHandler(
            submitter=pipeline,
            authenticator=self.authenticator,
            throttle=self.throttle,
            clock=self.clock,
            max_recipients=sub.max_recipients,
            max_header_size=sub.max_header_size,
            user_rate=None,
            suppressions=self.suppressions,
            drop_suppressed=cfg.inbound.suppression.at_rcpt == "accept-and-drop",
            observer=self.link,
            space=self.space,
            bearer=self.bearer,
        )

    async def start(self) -> None:
        """Bind every listener with SO_REUSEPORT, beside the other workers' sockets."""
        await self.server.start(reuse_port=True)
        log.info(kv(event="worker_listening", worker=self.index,
                    listeners=",".join(x.spec.name for x in self.server.listeners)))  # fmt: skip

    async def reload(self) -> None:
        """SIGHUP: re-read the file and take all of it, or raise and keep all of the old.

        Everything that can fail (the file, the certificate in OpenSSL, the DKIM keys, the
        OAuth verifier) is built before anything is swapped in.
        """
        new = await asyncio.to_thread(load_checked, self.cfg.source)
        new, _ = keep_restart_keys(self.cfg, new)
        if self.tls_context is not None and new.tls.enabled:
            new.tls.server_context()  # OpenSSL's own checks, on a context nobody uses
        keyset = await asyncio.to_thread(load_keyset, new.dkim)
        bearer = _bearer(new, self.users, self.clock) if new.oauth != self.cfg.oauth else None
        # From here on nothing is expected to fail.
        set_level(new.server.log_level)
        if self.tls_context is not None and new.tls.cert and new.tls.key:
            self.tls_context.load_cert_chain(str(new.tls.cert), str(new.tls.key))
        self.signer.reload(keyset)
        if new.oauth != self.cfg.oauth:
            old, self.bearer = self.bearer, bearer
            if old is not None:
                await old.aclose()
        self.throttle.local.settings = new.submission.auth
        self.server.reconfigure(new.submission, self.handler_for(new))  # with the new bearer
        self.cfg = new
        log.info(kv(event="worker_reloaded", worker=self.index))

    def stop_accepting(self) -> None:
        """Close the listening sockets now (``close`` then drains the sessions)."""
        for item in self.server.listeners:
            item.server.close()

    async def close(self) -> None:
        await self.server.close(self.cfg.server.drain_timeout)
        if self.connections is not None:
            self.connections.close()
        self.authenticator.close()
        if self.bearer is not None:
            await self.bearer.aclose()


async def _main(cfg: Config, index: int, fd: int) -> None:
    clock = SystemClock()
    sock = socket.socket(fileno=fd)
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    link = OwnerLink(reader, writer)
    reading = asyncio.create_task(link.run(), name="owner-link")
    stores = await open_stores(cfg, clock)
    stop = asyncio.Event()
    reloads: asyncio.Queue[None] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reloads.put_nowait, None)
    worker = Worker(cfg, index, link, stores, clock)
    try:
        await worker.start()
        log.info(kv(event="worker_ready", worker=index, pid=os.getpid()))
        link.send(Frame(frames.READY, 0))  # after the line: READY=1 follows every worker's

        async def reloader() -> None:
            """Each SIGHUP is answered, applied or not: a reload that raised must not end
            this loop (the next SIGHUP would go unread and the owner wait for it)."""
            while True:
                await reloads.get()
                answer: dict[str, object] = {"ok": True, "error": ""}
                try:
                    await worker.reload()
                except Exception as exc:
                    error = f"{type(exc).__name__}: {exc}"
                    log.error(kv(event="reload_failed", worker=index, error=error))
                    answer = {"ok": False, "error": error}
                with contextlib.suppress(StorageError):  # the owner is gone: we stop anyway
                    link.send(Frame(frames.RELOADED, 0, frames.encode_json(answer)))

        reloading = asyncio.create_task(reloader(), name="reloader")
        gone = asyncio.create_task(link.closed.wait())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({gone, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if link.closed.is_set():
            log.error(kv(event="owner_gone", worker=index))
        for t in (reloading, gone, stopping):
            t.cancel()
        worker.stop_accepting()
        if not link.closed.is_set():
            with contextlib.suppress(StorageError):  # the owner says STOPPING=1 after this
                link.send(Frame(frames.CLOSED, 0))
        await worker.close()
    finally:
        await link.aclose()
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
        await stores.db.close()
        log.info(kv(event="worker_stopped", worker=index))


def serve_worker(cfg: Config, index: int, fd: int) -> int:
    """The ``serve --worker`` entry point; exit 0 after a drain, 1 on a startup failure."""
    setup_logging(cfg.server.log_level)
    try:
        uvloop.run(_main(cfg, index, fd))
    except (MtaError, OSError) as exc:
        log.error(kv(event="worker_fatal", worker=index, error=str(exc)))
        return 1
    sys.stderr.flush()
    return 0
