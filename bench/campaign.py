"""Campaign queueing rate and daemon memory, against ``bench.submission``'s durable enqueue.

Run: ``.venv/bin/python -m bench.campaign [--n 100000] [--quick]``

Two measurements in one invocation:

- baseline: ``bench.submission``'s mtaserver server (plain mode: trusted network, the full
  submission policy, SQLite WAL, ``synchronous=FULL``, group commit, 250 only after the
  commit) driven by its own client, ``--sessions`` sessions; messages/s into the queue,
  best of ``--repeat`` runs, the last one after the campaign (the machine's load shifts
  over minutes; each run's load average is printed);
- campaign: a real daemon (``mtaserver serve``, embedded SQLite, a fresh data directory)
  with ``n`` contacts imported by ``mtaserver contacts import --list all``, then
  ``mtaserver campaigns start`` of a campaign to that list (a template personalised from
  the contact's attributes). ``[delivery] relay_host`` is ``bench.submission``'s
  discarding aiosmtpd sink in a child process: the feeder holds back while
  ``max_in_flight`` (20,000) recipients are due, so a campaign larger than that is queued
  only as fast as delivery makes room — the daemon delivers while it queues, as it would
  in service. The rate is recipients queued (``campaign_runs.queued``, committed with the
  messages) from the start command to the run's ``done``; the audience snapshot is
  inside that time. The rate of the first 20,000 (queued before the bound applies) is
  printed too.

The daemon's RSS is sampled every 50 ms from ``/proc/<pid>/status`` while the campaign
runs, and its ``VmHWM`` (the kernel's own peak, between samples too) is read at the end.
Goals (issue #15): campaign rate >= 0.5x the baseline, daemon RSS < 200 MB throughout.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import trustme
import uvloop

from bench import submission
from tests.support.daemon import Daemon, TestConfig

OWNER = "bench"
MB = 1_000_000
IN_FLIGHT = 20_000  # the feeder's max_in_flight: due or leased recipients it lets queue up
HTML = "<p>Hello {{contact.name}}, your {{contact.plan}} plan renews soon.</p>" * 8


@dataclass(frozen=True)
class CampaignResult:
    recipients: int
    seconds: float  # start command → run done
    import_seconds: float
    rss_before: int  # bytes, just before the start command
    rss_peak_sampled: int  # bytes, highest 50 ms sample during the campaign
    hwm: int  # bytes, VmHWM at the end (the process's lifetime peak)
    delivered: int  # recipients the sink had accepted when the run was done
    first: int  # the first recipients, queued before the feeder's in-flight bound applies
    first_seconds: float  # start command → ``first`` queued
    load: float  # 1-minute load average when the run was done

    @property
    def rate(self) -> float:
        return self.recipients / self.seconds


def baseline(sessions: int, total: int, repeat: int) -> list[tuple[float, float]]:
    """``bench.submission``'s plain-mode mtaserver rate (msg/s) and the 1-minute load
    average after it, per run."""
    out: list[tuple[float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-campaign-sub-") as tmp:
        root = Path(tmp)
        cert = trustme.CA().issue_cert("localhost", "127.0.0.1")
        for n in range(repeat):
            workdir = root / f"ours-{n}"
            workdir.mkdir()
            cert.private_key_pem.write_to_path(str(workdir / "key.pem"))
            cert.cert_chain_pems[0].write_to_path(str(workdir / "cert.pem"))
            with submission.server_process("ours", workdir) as (plain_port, _):
                seconds = uvloop.run(submission.drive(plain_port, tls=None, sessions=sessions,
                                                      total=total, size=2048))  # fmt: skip
            if submission.queued(workdir) != total:
                raise RuntimeError(f"{submission.queued(workdir)} queued, expected {total}")
            out.append((total / seconds, os.getloadavg()[0]))
    return out


def _kb(pid: int, field: str) -> int:
    m = re.search(rf"^{field}:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    return int(m.group(1)) * 1024 if m else 0


class _Sampler(threading.Thread):
    """VmRSS of ``pid`` every ``every`` seconds until stopped; keeps the highest."""

    def __init__(self, pid: int, every: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak = 0
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.is_set():
            try:
                self.peak = max(self.peak, _kb(self.pid, "VmRSS"))
            except FileNotFoundError:
                return
            self._done.wait(self.every)

    def stop(self) -> int:
        self._done.set()
        self.join()
        return self.peak


def make_csv(path: Path, n: int) -> None:
    with path.open("w") as f:
        f.write("email,name,plan\n")
        for i in range(n):
            f.write(f"user{i}@dest{i % 50}.test,User {i},{'pro' if i % 3 == 0 else 'free'}\n")


def _run_state(db: Path) -> tuple[int, int, str] | None:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT audience, queued + skipped, status FROM campaign_runs"
        ).fetchone()
    finally:
        conn.close()
    return None if row is None else (int(row[0]), int(row[1]), str(row[2]))


def _delivered(db: Path) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        sql = "SELECT count(*) FROM recipients WHERE state = 'delivered'"
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def campaign(n: int, timeout: float) -> CampaignResult:
    with tempfile.TemporaryDirectory(prefix="bench-campaign-") as tmp:
        root = Path(tmp)
        cfg = TestConfig(root, tls=False)
        cfg.set("server", log_level="warning")
        cert = trustme.CA().issue_cert("localhost", "127.0.0.1")
        cert.private_key_pem.write_to_path(str(root / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(root / "cert.pem"))
        with contextlib.ExitStack() as stack:
            sink_port, _ = stack.enter_context(submission.server_process("sink", root))
            cfg.set("delivery", relay_host=f"127.0.0.1:{sink_port}", tls="none")
            daemon = Daemon(cfg)
            daemon.start()
            stack.callback(daemon.stop)

            def cli(*args: str, stdin: bytes | None = None) -> str:
                out = daemon.cli(*args, input=stdin)
                if out.returncode != 0:
                    raise RuntimeError(f"mtaserver {' '.join(args)}: {out.stderr}")
                return out.stdout

            cli("user", "add", OWNER, "--domain", "example.com", "--password-stdin",
                stdin=b"bench password\n")  # fmt: skip
            (root / "t.html").write_text(HTML)
            cli("template", "put", "renewal", "--subject", "Renewal for {{contact.name}}",
                "--html", str(root / "t.html"))  # fmt: skip
            make_csv(root / "contacts.csv", n)
            t0 = time.perf_counter()
            cli("contacts", "import", str(root / "contacts.csv"), "--list", "all", "--user", OWNER)
            imported = time.perf_counter() - t0
            cli("campaigns", "create", "renewal", "--template", "renewal", "--from",
                "news@example.com", "--list", "all", "--user", OWNER)  # fmt: skip
            assert daemon.proc is not None
            pid = daemon.proc.pid
            before = _kb(pid, "VmRSS")
            sampler = _Sampler(pid)
            sampler.start()
            first, first_at = min(n, IN_FLIGHT), 0.0
            t0 = time.perf_counter()
            cli("campaigns", "start", "renewal", "--user", OWNER)
            while True:
                state = _run_state(cfg.database)
                if not first_at and state is not None and state[1] >= first:
                    first_at = time.perf_counter() - t0
                if state is not None and state[2] == "done":
                    break
                if time.perf_counter() - t0 > timeout:
                    raise RuntimeError(f"campaign not done after {timeout}s: {state}")
                time.sleep(0.02)
            seconds = time.perf_counter() - t0
            peak = sampler.stop()
            hwm = _kb(pid, "VmHWM")
            if state[:2] != (n, n):
                raise RuntimeError(f"run {state}, expected {n} recipients fed")
            delivered = _delivered(cfg.database)
    return CampaignResult(n, seconds, imported, before, peak, hwm, delivered, first, first_at,
                          os.getloadavg()[0])  # fmt: skip


def main(argv: list[str] | None = None) -> tuple[float, CampaignResult]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=100_000, help="contacts, all in the campaign")
    ap.add_argument("--sessions", type=int, default=50, help="baseline SMTP sessions")
    ap.add_argument("--messages", type=int, default=3000, help="baseline messages per run")
    ap.add_argument("--repeat", type=int, default=3,
                    help="baseline runs, the last after the campaign; best counts")  # fmt: skip
    ap.add_argument("--quick", action="store_true",
                    help="10,000 contacts, 1,000-message baseline runs")  # fmt: skip
    ap.add_argument("--timeout", type=float, default=900.0, help="give up on the campaign")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.messages, args.repeat = 10_000, 1000, 2
    # baseline runs before and after the campaign: load from elsewhere shifts over minutes
    runs = baseline(args.sessions, args.messages, max(1, args.repeat - 1))
    res = campaign(args.n, args.timeout)
    runs += baseline(args.sessions, args.messages, 1)
    base = max(rate for rate, _ in runs)  # best run, as bench.submission reports
    ratio = res.rate / base
    print(f"campaign queueing: {res.recipients} contacts (imported in {res.import_seconds:.1f} s"
          f" by the CLI), one list; {os.cpu_count()} cores")  # fmt: skip
    print(f"{'':<50} {'rcpt/s':>8} {'ratio':>7}  load")
    for i, (rate, load) in enumerate(runs):
        when = "after" if i == len(runs) - 1 else "before"
        print(f"{'bench.submission durable enqueue, ' + when:<50} {rate:>8.0f} "
              f"{rate / base:>6.2f}x  {load:.1f}")  # fmt: skip
    verdict = "ok" if ratio >= 0.5 else "BELOW TARGET 0.5"
    first = res.first / res.first_seconds
    print(f"{f'campaign start -> first {res.first} queued':<50} {first:>8.0f} "
          f"{first / base:>6.2f}x")  # fmt: skip
    print(f"{'campaign start -> all queued':<50} {res.rate:>8.0f} {ratio:>6.2f}x  "
          f"{res.load:.1f}  {verdict} (goal >= 0.5x the best baseline run)")  # fmt: skip
    after, load = runs[-1]
    print(f"  vs the baseline run right after it (load {load:.1f}): {res.rate / after:.2f}x")
    peak = max(res.rss_peak_sampled, res.hwm)
    print(f"daemon RSS: {res.rss_before / MB:.0f} MB before the start, peak "
          f"{res.rss_peak_sampled / MB:.0f} MB sampled / {res.hwm / MB:.0f} MB VmHWM "
          f"({'ok' if peak < 200 * MB else 'OVER'} < 200 MB); "
          f"{res.recipients} queued in {res.seconds:.1f} s, {res.delivered} of them delivered "
          "to the sink by then")  # fmt: skip
    return ratio, res


if __name__ == "__main__":
    main()
