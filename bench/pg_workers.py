"""Worker start time and memory at ``[server] workers = 2`` on a PostgreSQL node: this tree
against a baseline revision, in one invocation.

The baseline is the ``mtaserver`` package of ``--baseline REV`` (``git archive``, run from a
temporary directory); "tree" is this checkout. Rounds alternate baseline and tree (one
unreported warm-up of each first: bytecode, the database's migrations). Each round starts a
daemon (TLS on, two workers, a private PostgreSQL server on loopback, delivery relayed to
Postfix's smtp-sink) and reports:

* ``ready``: exec of ``mtaserver serve`` to its READY=1;
* ``worker``: each worker's start, the owner's ``worker_started`` line to the worker's
  ``worker_ready`` (its PostgreSQL pool open, its listeners bound), mean of the two;
* ``restart``: the same for worker 0 after kill -9 (the back-off before it not counted);
* PSS (``/proc/PID/smaps_rollup``) of the whole process tree — owner, template, workers —
  1 s after READY=1 (split per role), and its peak while ``--messages`` go through.

    .venv/bin/python -m bench.pg_workers --baseline HEAD
    .venv/bin/python -m bench.pg_workers --baseline 24ef627 --runs 5 --messages 1000
"""

from __future__ import annotations

import argparse
import os
import signal
import smtplib
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench.relay import PeakMemory, Sink, descendants, pss_kib
from tests.pg import PgServer, running_server
from tests.support.daemon import TestConfig
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[1]


class Node:
    """``mtaserver serve`` from ``code`` with its output timed line by line."""

    def __init__(self, cfg: TestConfig, code: Path) -> None:
        self.cfg, self.code = cfg, code
        self.lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> float:
        """Start; seconds until READY=1."""
        path = self.cfg.write()
        sock_path = self.cfg.dir / f"notify-{time.monotonic_ns()}.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(sock_path))
        notify.settimeout(timeout)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(NOTIFY_SOCKET=str(sock_path), PYTHONUNBUFFERED="1")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mtaserver", "serve", "-c", str(path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=self.code,
        )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        try:
            while b"READY=1" not in notify.recv(4096).split(b"\n"):
                pass
        except TimeoutError:
            raise RuntimeError("no READY=1:\n" + self.text()[-3000:]) from None
        finally:
            notify.close()
        return time.monotonic() - t0

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append((time.monotonic(), raw.decode(errors="replace")))
                self._cond.notify_all()

    def text(self) -> str:
        return "".join(line for _, line in self.lines)

    def when(self, token: str, after: float = 0.0, timeout: float = 60.0) -> float:
        """The time the first line containing ``token`` at or after ``after`` arrived."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for t, line in self.lines:
                    if t >= after and token in line:
                        return t
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeError(f"no {token!r}:\n" + self.text()[-3000:])
                self._cond.wait(left)

    def worker_pid(self, index: int) -> int:
        found = [line for _, line in self.lines if f"event=worker_started worker={index} " in line]
        return int(found[-1].split("pid=")[1].split()[0])

    def stop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@dataclass
class Round:
    variant: str
    ready: float  # s
    worker: float  # s, mean of the two workers
    restart: float  # s
    owner: float  # MiB PSS after start
    template: float
    workers: float
    peak: float  # MiB, tree under load

    @property
    def tree(self) -> float:
        return self.owner + self.template + self.workers


def config(dir: Path, server: PgServer, database: str, sink_port: int) -> TestConfig:
    (dir / "pgpass").write_text(server.password + "\n")
    cfg = TestConfig(dir, tls=True)
    cfg.set("server", workers=2, log_level="info")
    cfg.set("storage", backend="postgresql", dsn=server.dsn(database),
            password_file=str(dir / "pgpass"), tls="disable", pool_size=4)  # fmt: skip
    cfg.set("delivery", relay_host=f"127.0.0.1:{sink_port}", tls="none")
    cfg.set("shaping", poll_interval="20ms")
    cfg.set("submission", max_connections_per_ip=200)
    return cfg


def send(port: int, n: int, sessions: int = 4) -> None:
    """``n`` messages of ~2 KB over ``sessions`` connections; raises what a session met."""
    body = ("x" * 76 + "\r\n") * 26
    failed: list[BaseException] = []

    def session(k: int) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=60) as s:
                for i in range(k, n, sessions):
                    s.sendmail(
                        "app@example.com", [f"u{i}@dest.test"], f"Subject: {i}\r\n\r\n{body}"
                    )
        except (OSError, smtplib.SMTPException) as exc:
            failed.append(exc)

    threads = [threading.Thread(target=session, args=(k,)) for k in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise RuntimeError(f"sending failed: {failed[0]!r}")


def one_round(variant: str, code: Path, dir: Path, server: PgServer, database: str,
              sink: Sink, n: int) -> Round:  # fmt: skip
    dir.mkdir(parents=True)
    cfg = config(dir, server, database, sink.port)
    node = Node(cfg, code)
    ready = node.start()
    try:
        assert node.proc is not None
        starts = [node.when(f"event=worker_ready worker={i} ")
                  - node.when(f"event=worker_started worker={i} ") for i in (0, 1)]  # fmt: skip
        time.sleep(1.0)
        owner = node.proc.pid
        pss = {p: pss_kib(p) / 1024 for p in descendants(owner)}
        workers = {node.worker_pid(0), node.worker_pid(1)}
        template = sum(v for p, v in pss.items() if p not in workers and p != owner)
        rest = sum(v for p, v in pss.items() if p in workers)
        mem = PeakMemory([owner])
        sink.reset()
        send(cfg.address("submission", "listen_plain")[1], n)
        sink.wait(n, timeout=300)
        peak = mem.stop() / 1024
        killed = time.monotonic()
        os.kill(node.worker_pid(0), signal.SIGKILL)
        begun = node.when("event=worker_started worker=0 ", after=killed)
        restart = node.when("event=worker_ready worker=0 ", after=begun) - begun
        return Round(variant, ready, statistics.mean(starts), restart, pss[owner], template,
                     rest, peak)  # fmt: skip
    finally:
        node.stop()
        (dir / "daemon.log").write_text(node.text())


def report(rounds: list[Round], baseline: str) -> None:
    print(f"{'variant':<9} {'ready s':>7} {'worker ms':>9} {'restart ms':>10} "
          f"{'owner':>6} {'templ':>6} {'workers':>7} {'tree MiB':>8} {'peak MiB':>8}")  # fmt: skip
    for r in rounds:
        print(f"{r.variant:<9} {r.ready:>7.2f} {1000 * r.worker:>9.0f} {1000 * r.restart:>10.0f} "
              f"{r.owner:>6.1f} {r.template:>6.1f} {r.workers:>7.1f} {r.tree:>8.1f} "
              f"{r.peak:>8.1f}")  # fmt: skip
    med: dict[str, dict[str, float]] = {}
    for v in ("baseline", "tree"):
        rs = [r for r in rounds if r.variant == v]
        med[v] = {k: statistics.median(getattr(r, k) for r in rs)
                  for k in ("ready", "worker", "restart", "tree", "peak")}  # fmt: skip
    print(f"\nmedians (baseline = {baseline}):")
    for k, unit, scale in (("ready", "s", 1), ("worker", "ms", 1000), ("restart", "ms", 1000),
                           ("tree", "MiB", 1), ("peak", "MiB", 1)):  # fmt: skip
        b, t = med["baseline"][k], med["tree"][k]
        print(f"  {k:<8} baseline {scale * b:8.2f} {unit:<3}  tree {scale * t:8.2f} {unit:<3}"
              f"  tree/baseline {t / b:5.2f}")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--baseline", default="HEAD", help="git revision to compare with")
    ap.add_argument("--runs", type=int, default=3, help="rounds of each (medians reported)")
    ap.add_argument("--messages", type=int, default=500, help="relayed during the peak sample")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mta-pgworkers-") as tmpdir, running_server() as pg:
        tmp = Path(tmpdir)
        os.chmod(tmp, 0o755)
        base = tmp / "baseline"
        base.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.baseline, "mtaserver"],
                                 capture_output=True, check=True).stdout  # fmt: skip
        subprocess.run(["tar", "-x", "-C", str(base)], input=archive, check=True)
        codes = {"baseline": base, "tree": ROOT}
        for v in codes:
            pg.psql(f"CREATE DATABASE {v}")
        sink = Sink(free_port())
        rounds: list[Round] = []
        try:
            for i in range(args.runs + 1):
                for v, code in codes.items():
                    r = one_round(v, code, tmp / f"{v}-{i}", pg, v, sink, args.messages)
                    if i:  # round 0 warms up: bytecode, migrations, page cache
                        rounds.append(r)
                print(f"round {i}/{args.runs} done{' (warm-up)' if not i else ''}", flush=True)
        finally:
            sink.close()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nworkers = 2 on PostgreSQL, TLS on; {args.messages} messages relayed per round; "
          f"load average after: {load}")  # fmt: skip
    report(rounds, args.baseline)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
