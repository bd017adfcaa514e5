"""Tracking endpoint throughput: mtaserver's pixel and redirect vs a bare aiohttp app.

    .venv/bin/python -m bench.tracking_http [--duration 10] [--connections 64] [--threads 1]

Each server runs in its own process under uvloop; ``wrk`` (Debian package ``wrk``) drives
it with a Lua script that rotates over 1000 recipients' tokens. The baseline is a minimal
aiohttp app (``web.Application`` with two routes) that answers the same GIF (and a fixed
302) without verifying or recording anything. mtaserver's runs are the real thing: token
verification, bot rules, IP privacy, the recorder writing every hit as an event through
the group-committed database. Prints requests/s and the ratio (target >= 0.7), and the
server's CPU time per request (all threads), which load from other processes disturbs less.

mtaserver's endpoint runs on aiohttp's low-level ``web.Server`` (no router, no
middleware), which alone serves more than an ``Application`` does. So that this does not
hide what tracking costs, the same bare GIF and 302 are also served from a low-level
server (``lowlevel``) and mtaserver's ratio against that is printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPIENTS = int(os.environ.get("BENCH_RECIPIENTS", "1000"))
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0"
SECRET = b"bench-secret-0123456789abcdef0123456789"
TARGET = "https://shop.example.com/winter-sale?utm_source=newsletter&utm_medium=email"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- servers (run in a child process) ---------------------------------------------------------
async def _baseline(port: int) -> None:
    from aiohttp import web

    from mtaserver.tracking.web import GIF

    async def pixel(request: web.Request) -> web.Response:
        return web.Response(
            body=GIF, content_type="image/gif", headers={"Cache-Control": "no-store"}
        )

    async def click(request: web.Request) -> web.Response:
        return web.Response(status=302, headers={"Location": TARGET, "Cache-Control": "no-store"})

    app = web.Application()
    app.router.add_get("/o/{token}.gif", pixel)
    app.router.add_get("/c/{token}", click)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    print("READY", flush=True)
    await asyncio.Event().wait()


async def _lowlevel(port: int) -> None:
    from aiohttp import web

    from mtaserver.tracking.web import GIF

    async def handler(request: web.BaseRequest) -> web.Response:
        if request.raw_path.startswith("/o/"):
            return web.Response(
                body=GIF, content_type="image/gif", headers={"Cache-Control": "no-store"}
            )
        return web.Response(status=302, headers={"Location": TARGET, "Cache-Control": "no-store"})

    runner = web.ServerRunner(web.Server(handler, access_log=None))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, backlog=1024).start()
    print("READY", flush=True)
    await asyncio.Event().wait()


async def _mtaserver(port: int, workdir: Path, logged: bool) -> None:
    from mtaserver.clock import SystemClock
    from mtaserver.log import setup_logging
    from mtaserver.model import PreparedMessage, PreparedRecipient
    from mtaserver.storage.sqlite.db import Database
    from mtaserver.storage.sqlite.queue import Spool
    from mtaserver.storage.sqlite.tracking import SqlTrackingStore
    from mtaserver.tracking.bots import BotDetector, load_rules
    from mtaserver.tracking.privacy import IpPrivacy
    from mtaserver.tracking.recorder import Recorder
    from mtaserver.tracking.tokens import TokenCodec
    from mtaserver.tracking.web import TrackingWeb

    setup_logging("info")
    db = Database(workdir / "bench.db")
    await db.open()
    clock = SystemClock()
    await Spool(db).enqueue(
        PreparedMessage(
            queue_id="BENCH0000000000Q",
            sender="news@example.com",
            recipients=tuple(PreparedRecipient(f"r{i}@example.org") for i in range(RECIPIENTS)),
            data=b"Subject: bench\r\n\r\nx\r\n",
            user="bench",
            client_ip="192.0.2.1",
            received_at=clock.now() - 3600,
            campaign="bench",
        )
    )
    codec = TokenCodec((SECRET,))
    recorder = Recorder(
        SqlTrackingStore(db),
        BotDetector(load_rules()),
        IpPrivacy("truncate", codec.key),
        clock,
    )
    web = TrackingWeb(codec, recorder, clock, access_log=logged)
    await web.start("127.0.0.1", port)
    task = asyncio.create_task(recorder.run())
    print("READY", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await web.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        print(f"DROPPED {recorder.dropped}", flush=True)
        await db.close()


def _serve(kind: str, port: int, workdir: Path) -> None:
    import signal
    import sqlite3

    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        server = asyncio.create_task(
            _baseline(port)
            if kind == "baseline"
            else _lowlevel(port)
            if kind == "lowlevel"
            else _mtaserver(port, workdir, logged=kind == "mtaserver-logged")
        )
        waiter = asyncio.create_task(stop.wait())
        await asyncio.wait({server, waiter}, return_when=asyncio.FIRST_COMPLETED)
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
        if kind.startswith("mtaserver"):
            conn = sqlite3.connect(workdir / "bench.db")
            n = conn.execute(
                "SELECT count(*) FROM events WHERE type IN ('open','click')"
            ).fetchone()
            print(f"RECORDED {n[0]}", flush=True)
            conn.close()

    uvloop.run(main())


# -- driver -----------------------------------------------------------------------------------
def _lua(paths: list[str]) -> str:
    body = ",\n".join(json.dumps(p) for p in paths)
    return (
        f"local paths = {{\n{body}\n}}\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i % #paths + 1\n"
        f'  return wrk.format("GET", paths[i], {{["User-Agent"] = {json.dumps(UA)}}})\n'
        "end\n"
    )


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads included (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wrk(
    port: int, pid: int, script: Path, duration: int, connections: int, threads: int
) -> tuple[float, float]:
    """(requests/s, server CPU microseconds per request) for one wrk run."""
    cpu0 = _cpu_seconds(pid)
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "-s", str(script),
         f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    cpu = _cpu_seconds(pid) - cpu0
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    n = re.search(r"(\d+) requests in", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m is None or n is None or non2xx is not None:
        raise SystemExit(f"wrk failed or got errors:\n{out}")
    return float(m.group(1)), cpu / max(1, int(n.group(1))) * 1e6


KINDS = ("baseline", "lowlevel", "mtaserver", "mtaserver-logged")
MTASERVER = ("mtaserver", "mtaserver-logged")


def _start(kind: str, workdir: Path) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.tracking_http", "--serve", kind, "--port", str(port),
         "--workdir", str(workdir / kind)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "READY":
        proc.kill()
        raise SystemExit(f"{kind} server did not start")
    return proc, port


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    out, _ = proc.communicate(timeout=120)
    return out


def run(duration: int, connections: int, threads: int, rounds: int) -> dict[str, float]:
    """All servers up at once; runs interleaved round by round; medians compared.

    Interleaving makes the comparison fair on a shared machine: whatever else is running
    slows every contender in a round, not just one of them.
    """
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install -y wrk)")
    from mtaserver.tracking.tokens import TokenCodec

    codec = TokenCodec((SECRET,))
    qid = "BENCH0000000000Q"
    pixel = [f"/o/{codec.open_token(qid, i)}.gif" for i in range(RECIPIENTS)]
    click = [f"/c/{codec.click_token(qid, i, TARGET, 0, 1)}" for i in range(RECIPIENTS)]
    samples: dict[str, list[float]] = {}
    results: dict[str, float] = {}
    outs: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        scripts = {"pixel": work / "pixel.lua", "click": work / "click.lua"}
        scripts["pixel"].write_text(_lua(pixel))
        scripts["click"].write_text(_lua(click))
        servers: dict[str, tuple[subprocess.Popen[str], int]] = {}
        try:
            for kind in KINDS:
                (work / kind).mkdir()
                servers[kind] = _start(kind, work)
            for kind in KINDS:  # warm-up
                proc, port = servers[kind]
                _wrk(port, proc.pid, scripts["pixel"], 1, connections, threads)
            for _ in range(rounds):
                for what in ("pixel", "click"):
                    for kind in KINDS:
                        proc, port = servers[kind]
                        rps, us = _wrk(
                            port, proc.pid, scripts[what], duration, connections, threads
                        )
                        samples.setdefault(f"{kind}_{what}", []).append(rps)
                        samples.setdefault(f"{kind}_{what}_cpu_us", []).append(us)
        finally:
            outs = {kind: _stop(proc) for kind, (proc, _) in servers.items()}
    for key, values in samples.items():
        results[key] = statistics.median(values)
    for kind in MTASERVER:
        m = re.search(r"RECORDED (\d+)", outs.get(kind, ""))
        d = re.search(r"DROPPED (\d+)", outs.get(kind, ""))
        results[f"{kind}_recorded_events"] = float(m.group(1)) if m else -1.0
        results[f"{kind}_dropped_hits"] = float(d.group(1)) if d else -1.0
        for what in ("pixel", "click"):
            results[f"{kind}_{what}_ratio"] = (
                results[f"{kind}_{what}"] / results[f"baseline_{what}"]
            )
            results[f"{kind}_{what}_cpu_ratio"] = (
                results[f"baseline_{what}_cpu_us"] / results[f"{kind}_{what}_cpu_us"]
            )
            results[f"{kind}_{what}_lowlevel_ratio"] = (
                results[f"{kind}_{what}"] / results[f"lowlevel_{what}"]
            )
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=4, help="seconds per wrk run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median taken)")
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="wrk threads")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--serve", choices=KINDS, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        _serve(args.serve, args.port, args.workdir)
        return
    started = time.monotonic()
    r = run(args.duration, args.connections, args.threads, args.rounds)
    if args.json:
        print(json.dumps(r, indent=2))
        return
    print(f"wrk -t{args.threads} -c{args.connections} -d{args.duration}s x {args.rounds} rounds "
          f"(median), {os.cpu_count()} CPUs, {RECIPIENTS} rotating tokens")  # fmt: skip
    print("requests/s (ratio = mtaserver / baseline)")
    head = ("", "baseline", "mtaserver", "ratio", "+access log", "ratio")
    print("{:8} {:>10} {:>10} {:>6} {:>12} {:>6}".format(*head))
    for what in ("pixel", "click"):
        print(f"{what:8} {r[f'baseline_{what}']:10.0f} {r[f'mtaserver_{what}']:10.0f} "
              f"{r[f'mtaserver_{what}_ratio']:6.2f} {r[f'mtaserver-logged_{what}']:12.0f} "
              f"{r[f'mtaserver-logged_{what}_ratio']:6.2f}")  # fmt: skip
    print("server CPU per request, µs, all threads (ratio = baseline / mtaserver)")
    print("{:8} {:>10} {:>10} {:>6} {:>12} {:>6}".format(*head))
    for what in ("pixel", "click"):
        print(f"{what:8} {r[f'baseline_{what}_cpu_us']:10.1f} "
              f"{r[f'mtaserver_{what}_cpu_us']:10.1f} {r[f'mtaserver_{what}_cpu_ratio']:6.2f} "
              f"{r[f'mtaserver-logged_{what}_cpu_us']:12.1f} "
              f"{r[f'mtaserver-logged_{what}_cpu_ratio']:6.2f}")  # fmt: skip
    print("against aiohttp's low-level server answering the same (ratio = mtaserver / it)")
    for what in ("pixel", "click"):
        print(f"{what:8} {r[f'lowlevel_{what}']:10.0f} {r[f'mtaserver_{what}']:10.0f} "
              f"{r[f'mtaserver_{what}_lowlevel_ratio']:6.2f}")  # fmt: skip
    print(
        f"events recorded: {int(r['mtaserver_recorded_events'])} "
        f"(+{int(r['mtaserver-logged_recorded_events'])} with access log); hits dropped on a "
        f"full buffer: {int(r['mtaserver_dropped_hits'] + r['mtaserver-logged_dropped_hits'])}"
    )
    print(f"target ratio >= 0.70; took {time.monotonic() - started:.0f}s")


if __name__ == "__main__":
    main()
