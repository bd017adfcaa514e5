"""The worker template: a copy of the owner, forked before its event loop, that forks workers.

A fresh interpreter per worker costs ~30 MiB of private memory each (the imports, heaped
again in every process). Forking shares those pages copy-on-write — but forking the owner
once it runs (an event loop, SQLite connections, aiosqlite's threads) is unsafe. So
:func:`Template.fork` runs in ``serve`` before the loop starts, when the owner has imported
everything and opened nothing: the collector is frozen (``gc.freeze``: collections in the
owner and the template no longer write to those objects' pages) and the template process
is split off. It runs no loop and no thread, only :func:`_serve`: on each request from the
owner (a worker index, the config path and the worker's two inherited descriptors over a
``SOCK_SEQPACKET`` socketpair) it forks a worker, which loads the config and runs
:func:`mtaserver.workers.child.serve_worker` exactly as ``serve --worker`` would, and it
reports each worker's pid and, when it is reaped, its exit code.

The same on either backend. On PostgreSQL the template is forked with asyncpg and the
worker's PostgreSQL owners imported (shared pages, like the rest) but with no pool, no
connection and no loop: each worker opens its own small pool after its fork
(:func:`mtaserver.workers.pgchild.open_stores`), so no socket or protocol state is ever
shared between processes.

The owner signals workers directly (kill -9 and SIGTERM by pid). The template ignores
SIGTERM, SIGINT and SIGHUP (systemd's stop signals the whole control group: the owner
decides when it ends) and exits when the owner's end of the socket closes. If the template
itself is gone, the owner's :class:`~mtaserver.workers.pool.WorkerPool` starts fresh
interpreters instead (as before) and learns of the template's workers' deaths through
``pidfd``.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import gc
import os
import selectors
import signal
import socket
import threading

from mtaserver.errors import MtaError
from mtaserver.log import get_logger, kv
from mtaserver.workers import conncap

log = get_logger("workers")

UNKNOWN_EXIT = -255  # the exit code of a worker whose parent (the template) is gone


class ForkedWorker:
    """The owner's handle on a worker forked by the template (asyncio Process's methods)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._exited = asyncio.get_running_loop().create_future()

    def _set_exit(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._exited.set_result(code)

    async def wait(self) -> int:
        return await asyncio.shield(self._exited)

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Template:
    """The owner's end: ask for a worker, learn its pid and its exit."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self._sock = sock
        self._workers: dict[int, ForkedWorker] = {}
        self._pending: dict[int, asyncio.Future[int]] = {}  # index → pid
        self._reading = False
        self.alive = True

    @classmethod
    def fork(cls, *, postgres: bool = False) -> Template | None:
        """Split the template off this process; None if that is not safe (a thread or an
        event loop runs: a copy of either — or of a connection pool on that loop — would be
        shared by every worker). ``postgres``: workers read through asyncpg; load it now."""
        if threading.active_count() > 1 or _loop_running():
            return None
        import mtaserver.workers.child  # noqa: F401 - in the shared image, not per worker

        if postgres:
            from mtaserver.workers.pgchild import preload_postgres

            preload_postgres()

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        gc.collect()
        gc.freeze()
        pid = os.fork()
        if pid == 0:  # the template
            code = 1
            try:
                ours.close()
                code = _serve(theirs)
            finally:
                os._exit(code)
        theirs.close()
        return cls(pid, ours)

    async def spawn(self, index: int, config: str, link_fd: int, conncap_fd: int) -> ForkedWorker:
        if not self._reading:
            self._reading = True
            self._sock.setblocking(False)
            asyncio.get_running_loop().add_reader(self._sock.fileno(), self._on_readable)
        if not self.alive:
            raise MtaError("the worker template is gone")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[index] = fut
        fds = array.array("i", [link_fd, conncap_fd])
        try:
            self._sock.sendmsg(
                [f"spawn {index} {config}".encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)]
            )
            pid = await asyncio.wait_for(fut, 10.0)
        except (OSError, TimeoutError) as exc:
            raise MtaError(f"the worker template did not fork worker {index}: {exc}") from None
        finally:
            self._pending.pop(index, None)
        worker = self._workers.setdefault(pid, ForkedWorker(pid))
        return worker

    def _on_readable(self) -> None:
        while True:
            try:
                data = self._sock.recv(256)
            except BlockingIOError:
                return
            except OSError:
                data = b""
            if not data:
                self._lost()
                return
            words = data.decode().split()
            if words[0] == "started":
                index, pid = int(words[1]), int(words[2])
                self._workers.setdefault(pid, ForkedWorker(pid))
                fut = self._pending.get(index)
                if fut is not None and not fut.done():
                    fut.set_result(pid)
            elif words[0] == "exited":
                worker = self._workers.pop(int(words[1]), None)
                if worker is not None:
                    worker._set_exit(int(words[2]))

    def _lost(self) -> None:
        """The template died: its workers' exits are seen through pidfd from now on."""
        if not self.alive:
            return
        self.alive = False
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._sock.fileno())
        log.error(kv(event="worker_template_gone", pid=self.pid, workers=len(self._workers)))
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(OSError("the worker template is gone"))
        for worker in list(self._workers.values()):
            _watch_pidfd(loop, worker)
        self._workers.clear()

    async def close(self) -> None:
        """End the template (after the workers): it exits on the closed socket."""
        if self._reading and self.alive:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        self.alive = False
        self._sock.close()
        with contextlib.suppress(ChildProcessError):
            await asyncio.to_thread(os.waitpid, self.pid, 0)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _watch_pidfd(loop: asyncio.AbstractEventLoop, worker: ForkedWorker) -> None:
    try:
        fd = os.pidfd_open(worker.pid)
    except ProcessLookupError:
        worker._set_exit(UNKNOWN_EXIT)
        return

    def exited() -> None:
        loop.remove_reader(fd)
        os.close(fd)
        worker._set_exit(UNKNOWN_EXIT)

    loop.add_reader(fd, exited)


# -- the template process ------------------------------------------------------------------
def _serve(sock: socket.socket) -> int:
    """Fork a worker per request; report pids and exits; return when the owner is gone."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # the wakeup fd does the work
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj is sock:
                fds = array.array("i")
                try:
                    msg, anc, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(2 * fds.itemsize))
                except InterruptedError:
                    continue
                if not msg:
                    return 0
                for level, kind, data in anc:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                        fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                _, index, config = msg.decode().split(" ", 2)
                pid = _fork_worker(int(index), config, list(fds), sock, (wake_r, wake_w))
                for fd in fds:
                    os.close(fd)
                sock.send(f"started {index} {pid}".encode())
            else:
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
        _reap(sock)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        sock.send(f"exited {pid} {os.waitstatus_to_exitcode(status)}".encode())


def _fork_worker(
    index: int, config: str, fds: list[int], sock: socket.socket, wake: tuple[int, int]
) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:  # the worker: the template's own descriptors and signal set-up go
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        sock.close()
        for fd in wake:
            os.close(fd)
        link_fd, conncap_fd = fds
        os.environ.pop("NOTIFY_SOCKET", None)  # one READY=1, the owner's
        os.environ[conncap.FD_ENV] = str(conncap_fd)
        from mtaserver.keyfiles import load_checked
        from mtaserver.log import setup_logging
        from mtaserver.workers.child import serve_worker

        try:
            cfg = load_checked(config)
        except MtaError as exc:
            setup_logging()
            log.error(kv(event="worker_fatal", worker=index, error=str(exc)))
        else:
            code = serve_worker(cfg, index, link_fd)
    finally:
        os._exit(code)
