"""End-to-end relay throughput: smtp-source → MTA → smtp-sink, all on loopback high ports.

Three MTAs are measured in the same invocation, through the same source and sink:

* ``mtaserver``: the daemon as a real process, once per ``--workers`` value (``[server]
  workers``; memory counts the owner and its worker processes) — plaintext trusted
  listener, DKIM signing (RSA-2048, relaxed/relaxed), durable SQLite queue, scheduler
  and delivery agent relaying to the sink (``[delivery] relay_host``);
* ``postfix``: a private Postfix instance (own config_directory and queue_directory under a
  temporary directory, ``relayhost`` = the sink);
* ``postfix+opendkim``: the same with OpenDKIM signing as a milter, same key.

For each: messages/s from the first connection of smtp-source until the sink has counted
every message, and peak memory: the largest sum of PSS (proportional set size, so shared
libraries are not counted once per process) over the MTA's process tree — the mtaserver
daemon; Postfix's master and all its children, plus OpenDKIM — sampled every 100 ms.

    .venv/bin/python -m bench.relay                      # 20,000 messages of 4 KB over 50 sessions
    .venv/bin/python -m bench.relay -n 2000 --only mtaserver
    .venv/bin/python -m bench.relay -n 5000 --only mtaserver,postfix --workers 1,2,auto
    .venv/bin/python -m bench.relay -n 5000 --only mtaserver,postfix --reuse   # connections kept
    .venv/bin/python -m bench.relay -n 4000 --runs 3      # both modes, median of 3, all listed

By default both modes run, alternated: "many" messages per connection (smtp-source -d)
and "one" message per connection; ``--runs N`` repeats the whole set and reports each
MTA's median msg/s and peak PSS with every run listed, and the ratios of the medians.

Needs Debian's postfix (smtp-source, smtp-sink) and opendkim; never touches port 25.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = Path(__file__).resolve().parents[1]
SENDER = "bench@example.com"
RCPT = "rcpt@dest.example"
SELECTOR = "bench"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port}")


def tool(name: str) -> str:
    for d in ("/usr/sbin", "/usr/lib/postfix", "/usr/lib/postfix/sbin", "/usr/bin"):
        p = Path(d) / name
        if p.exists():
            return str(p)
    found = shutil.which(name)
    if not found:
        raise SystemExit(f"{name} not found: apt-get install -y postfix opendkim")
    return found


# -- the sink --------------------------------------------------------------------------------
class Sink:
    """Postfix's smtp-sink; counts messages from its -c output."""

    def __init__(self, port: int, dump: str | None = None) -> None:
        self.port = port
        self.count = 0
        extra = ["-D", f"{dump}/%M"] if dump else []
        self.proc = subprocess.Popen(
            [tool("smtp-sink"), "-c", "-u", "nobody", *extra, f"127.0.0.1:{port}", "1024"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self._base = 0
        threading.Thread(target=self._read, daemon=True).start()
        wait_port(port)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        while chunk := self.proc.stdout.read1(4096):  # type: ignore[attr-defined]
            buf = (buf + chunk)[-200:]
            found = re.findall(rb"mesg=(\d+)", buf)
            if found:
                self.count = int(found[-1])

    def reset(self) -> None:
        self._base = self.count

    @property
    def received(self) -> int:
        return self.count - self._base

    def wait(self, n: int, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while self.received < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"sink saw {self.received} of {n} messages")
            time.sleep(0.01)
        return time.monotonic()

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


# -- memory sampling -------------------------------------------------------------------------
def pss_kib(pid: int) -> int:
    """Proportional set size: shared pages split between the processes sharing them, so the
    sum over Postfix's many processes does not count libc fifty times."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (/proc/PID/stat utime, stime)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu(root: int) -> dict[int, float]:
    return {p: cpu_seconds(p) for p in descendants(root)}


class PeakMemory:
    """Samples the summed PSS of some process trees every 100 ms; keeps the peak."""

    def __init__(self, roots: list[int]) -> None:
        self.roots = roots
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = sum(pss_kib(p) for r in self.roots for p in descendants(r))
            self.peak = max(self.peak, total)
            self._stop.wait(0.1)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


# -- the source ------------------------------------------------------------------------------
def run_source(
    port: int, n: int, sessions: int, size: int, reuse: bool = False
) -> subprocess.CompletedProcess[bytes]:
    """One connection per message, or with ``reuse`` (smtp-source -d) many per connection."""
    out = subprocess.run(
        [tool("smtp-source"), *(["-d"] if reuse else []),
         "-s", str(sessions), "-m", str(n), "-l", str(size),
         "-f", SENDER, "-t", RCPT, "-M", "source.example", f"127.0.0.1:{port}"],
        capture_output=True, timeout=3600, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"smtp-source failed: {out.stdout!r} {out.stderr!r}")
    return out


@dataclass
class Result:
    name: str
    messages: int
    seconds: float
    peak_mib: float
    accept_seconds: float  # until smtp-source had every message accepted
    cpu_main: float = 0.0  # CPU seconds of the root process (mtaserver: the owner)
    cpu_rest: float = 0.0  # CPU seconds of its descendants (mtaserver: the workers)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds


def measure(name: str, sink: Sink, port: int, args: argparse.Namespace, mem: PeakMemory) -> Result:
    sink.reset()
    root = mem.roots[0]
    before = tree_cpu(root)
    t0 = time.monotonic()
    run_source(port, args.messages, args.sessions, args.size, args.reuse)
    accepted = time.monotonic()
    end = sink.wait(args.messages, timeout=max(600.0, args.messages / 10))
    peak = mem.stop()
    used = {p: c - before.get(p, 0.0) for p, c in tree_cpu(root).items()}
    main = used.pop(root, 0.0)
    return Result(
        name, args.messages, end - t0, peak / 1024, accepted - t0, main, sum(used.values())
    )


# -- mtaserver -------------------------------------------------------------------------------
@contextlib.contextmanager
def mtaserver(
    tmp: Path, sink_port: int, key: Path, args: argparse.Namespace, workers: str = "1"
) -> Iterator[tuple[int, int]]:
    port = free_port()
    data = tmp / "mta-data"
    conf = tmp / "mtaserver.toml"
    conf.write_text(
        f"""
[server]
hostname = "bench.example"
data_dir = "{data}"
log_level = "{args.log_level}"
workers = {workers if workers.isdigit() else f'"{workers}"'}

[submission]
listen_plain = "127.0.0.1:{port}"
trusted_networks = ["127.0.0.0/8"]
max_connections_per_ip = 1000

[delivery]
relay_host = "127.0.0.1:{sink_port}"
tls = "none"
nameservers = ["127.0.0.1:9"]
max_connections = {args.concurrency}

[shaping.default]
max_connections = {args.concurrency}
max_messages_per_connection = 1000

[[dkim]]
domain = "example.com"
selector = "{SELECTOR}"
key = "{key}"
algorithm = "rsa-sha256"
"""
    )
    log = open(tmp / "mtaserver.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtaserver", "serve", "-c", str(conf)],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    try:
        wait_port(port)
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# -- postfix ---------------------------------------------------------------------------------
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


@contextlib.contextmanager
def postfix(
    tmp: Path, sink_port: int, milter_port: int | None, args: argparse.Namespace
) -> Iterator[tuple[int, int]]:
    port = free_port()
    conf = tmp / "conf"
    conf.mkdir()
    queue = tmp / "queue"
    data = tmp / "data"
    queue.mkdir()
    data.mkdir()
    shutil.chown(data, "postfix")
    milter = ""
    if milter_port:
        milter = (
            f"smtpd_milters = inet:127.0.0.1:{milter_port}\n"
            "milter_default_action = tempfail\nmilter_protocol = 6\n"
        )
    (conf / "main.cf").write_text(
        f"""\
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.example
mydomain = example
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
relayhost = [127.0.0.1]:{sink_port}
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
local_recipient_maps =
maillog_file = {tmp}/postfix.log
maillog_file_prefixes = {tmp}
smtp_tls_security_level = none
smtpd_tls_security_level = none
default_process_limit = 200
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
default_destination_concurrency_limit = {args.concurrency}
smtp_destination_concurrency_limit = {args.concurrency}
{milter}"""
    )
    (conf / "master.cf").write_text(MASTER_CF.format(port=port))
    env = dict(os.environ, MAIL_CONFIG=str(conf))
    out = subprocess.run(["postfix", "-c", str(conf), "start"], env=env, capture_output=True)
    if out.returncode != 0:
        log = (
            (tmp / "postfix.log").read_text(errors="replace")
            if (tmp / "postfix.log").exists()
            else ""
        )
        raise RuntimeError(
            f"postfix start failed: {out.stdout.decode(errors='replace')}"
            f"{out.stderr.decode(errors='replace')}{log}"
        )
    try:
        wait_port(port)
        pid = int((queue / "pid" / "master.pid").read_text().split()[0])
        yield port, pid
    finally:
        subprocess.run(["postfix", "-c", str(conf), "stop"], env=env, capture_output=True)
        # wait for the master to go
        for _ in range(100):
            if not (queue / "pid" / "master.pid").exists():
                break
            time.sleep(0.1)


@contextlib.contextmanager
def opendkim(tmp: Path, key: Path) -> Iterator[tuple[int, int]]:
    port = free_port()
    conf = tmp / "opendkim.conf"
    conf.write_text(
        f"""\
Syslog no
Mode s
Socket inet:{port}@127.0.0.1
Domain example.com
Selector {SELECTOR}
KeyFile {key}
Canonicalization relaxed/relaxed
SignatureAlgorithm rsa-sha256
PidFile {tmp}/opendkim.pid
Background no
RequireSafeKeys no
"""
    )
    proc = subprocess.Popen(
        [tool("opendkim"), "-f", "-x", str(conf)],
        stdout=subprocess.DEVNULL, stderr=open(tmp / "opendkim.log", "wb"),  # noqa: SIM115
    )  # fmt: skip
    try:
        wait_port(port)
        yield port, proc.pid
    finally:
        proc.terminate()
        proc.wait(10)


# -- main ------------------------------------------------------------------------------------
def make_key(path: Path) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def run_all(
    tmp: Path, key: Path, sink: Sink, args: argparse.Namespace, reuse: bool
) -> list[Result]:
    """One pass: every MTA of ``--only`` (mtaserver once per ``--workers`` value), one mode."""
    which = args.only.split(",")
    args.reuse = reuse
    tag = "many" if reuse else "one"
    results: list[Result] = []
    if "mtaserver" in which:
        for workers in args.workers.split(","):
            d = Path(tempfile.mkdtemp(prefix=f"mtaserver-{workers}-{tag}-", dir=tmp))
            with mtaserver(d, sink.port, key, args, workers) as (port, pid):
                mem = PeakMemory([pid])  # the owner and its worker processes
                results.append(measure(f"mtaserver (DKIM, w={workers})", sink, port, args, mem))
    if "postfix" in which:
        d = Path(tempfile.mkdtemp(prefix=f"postfix-{tag}-", dir=tmp))
        os.chmod(d, 0o755)
        with postfix(d, sink.port, None, args) as (port, pid):
            results.append(measure("postfix", sink, port, args, PeakMemory([pid])))
    if "postfix+opendkim" in which:
        d = Path(tempfile.mkdtemp(prefix=f"postfix-dkim-{tag}-", dir=tmp))
        os.chmod(d, 0o755)
        with opendkim(d, key) as (mport, dpid), postfix(d, sink.port, mport, args) as (port, pid):
            mem = PeakMemory([pid, dpid])
            results.append(measure("postfix + opendkim", sink, port, args, mem))
    return results


def median(values: list[float]) -> float:
    return statistics.median(values)


def report(mode: str, runs: list[list[Result]], args: argparse.Namespace) -> None:
    """Per MTA: the median msg/s and peak PSS of the runs, every run listed; ratios of medians."""
    names = [r.name for r in runs[0]]
    by: dict[str, list[Result]] = {
        n: [r for run in runs for r in run if r.name == n] for n in names
    }
    what = "many messages" if mode == "many" else "one message"
    print(f"\n== {what} per connection ({args.messages} x {args.size} B, "
          f"{args.sessions} sessions, {len(runs)} run(s)) ==")  # fmt: skip
    print(f"{'MTA':<26} {'msg/s':>7} {'accepted/s':>10} {'peak MiB':>9} {'CPU ms/msg':>11}  "
          "runs: msg/s (peak MiB)")  # fmt: skip
    medians: dict[str, float] = {}
    for name, rs in by.items():
        medians[name] = median([r.rate for r in rs])
        acc = median([r.messages / r.accept_seconds for r in rs])
        peak = median([r.peak_mib for r in rs])
        main_ms = median([1000 * r.cpu_main / r.messages for r in rs])
        rest_ms = median([1000 * r.cpu_rest / r.messages for r in rs])
        each = ", ".join(f"{r.rate:.0f} ({r.peak_mib:.0f})" for r in rs)
        print(f"{name:<26} {medians[name]:>7.0f} {acc:>10.0f} {peak:>9.1f} "
              f"{main_ms:>5.2f}+{rest_ms:<5.2f}  {each}")  # fmt: skip
    for name in (n for n in names if n.startswith("mtaserver")):
        for base in ("postfix", "postfix + opendkim"):
            if base in medians:
                per_run = ", ".join(
                    f"{a.rate / b.rate:.2f}" for a, b in zip(by[name], by[base], strict=True)
                )
                print(f"ratio {name} / {base}: {medians[name] / medians[base]:.2f} "
                      f"(median of medians; per run {per_run})")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("-n", "--messages", type=int, default=20000)
    ap.add_argument("-s", "--sessions", type=int, default=50)
    ap.add_argument("-l", "--size", type=int, default=4096, help="message body bytes")
    ap.add_argument("--concurrency", type=int, default=20,
                    help="outbound connections to the sink (each MTA)")  # fmt: skip
    ap.add_argument("--only", default="mtaserver,postfix,postfix+opendkim")
    ap.add_argument("--log-level", default="info", help="mtaserver log level")
    ap.add_argument("--dump", help="directory where the sink writes every message it gets")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="many messages per connection (default: one per connection)",
    )
    ap.add_argument("--workers", default="1,2,auto",
                    help="mtaserver [server] workers values, one run each")  # fmt: skip
    ap.add_argument("--modes", default="many,one",
                    help="many (smtp-source -d), one (per connection), or both")  # fmt: skip
    ap.add_argument("--runs", type=int, default=1,
                    help="passes over everything; medians reported, every run listed")  # fmt: skip
    args = ap.parse_args(argv)
    modes = ["many"] if args.reuse else args.modes.split(",")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    passes: dict[str, list[list[Result]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="mta-relay-") as tmpdir:
        tmp = Path(tmpdir)
        os.chmod(tmp, 0o755)
        key = tmp / "dkim.pem"
        make_key(key)
        sink = Sink(free_port(), args.dump)
        try:
            for i in range(args.runs):
                for mode in modes:  # alternated, so a change in the machine's load hits both
                    passes[mode].append(run_all(tmp, key, sink, args, mode == "many"))
                    print(f"run {i + 1}/{args.runs} ({mode} per connection) done", flush=True)
        finally:
            sink.close()
    print(f"\nsmtp-source → MTA → smtp-sink on loopback; outbound concurrency {args.concurrency}")
    print(f"load average before the runs: {load}; after: "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")  # fmt: skip
    for mode in modes:
        report(mode, passes[mode], args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
