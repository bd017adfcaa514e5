"""``mtaserver queue summary|list|show|retry|delete|hold|release``: the operator's view of the
queue, safe while the daemon runs (SQLite WAL: readers never block the daemon, and the few
writes wait their turn behind its group commits)."""

from __future__ import annotations

import argparse
import datetime
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from mtaserver.cli._common import add_config_arg, config_from, with_db, with_pg
from mtaserver.clock import SystemClock
from mtaserver.errors import MtaError
from mtaserver.model import FINAL_STATES, RecipientState
from mtaserver.storage.postgres.queue import PgQueue
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.queue import Spool

T = TypeVar("T")
STATES = tuple(s.value for s in RecipientState)


class QueueError(MtaError):
    """An operator asked for something the queue does not have."""


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("queue", help="inspect and act on the delivery queue")
    acts = p.add_subparsers(dest="queue_command", metavar="ACTION")
    acts.required = True

    s = acts.add_parser("summary", help="recipients by destination and age (like qshape)")
    add_config_arg(s)
    s.add_argument("--top", type=int, default=50, help="destinations shown (default 50)")
    s.set_defaults(func=run_summary)

    ls = acts.add_parser("list", help="list recipients not yet final")
    add_config_arg(ls)
    ls.add_argument("--domain", help="only this recipient domain")
    ls.add_argument("--state", choices=STATES, help="only this state (final states too)")
    ls.add_argument("--limit", type=int, default=100, help="rows (default 100)")
    ls.set_defaults(func=run_list)

    sh = acts.add_parser("show", help="one message and its recipients")
    add_config_arg(sh)
    sh.add_argument("queue_id")
    sh.set_defaults(func=run_show)

    r = acts.add_parser("retry", help="make a message (or all) due now")
    add_config_arg(r)
    target = r.add_mutually_exclusive_group(required=True)
    target.add_argument("queue_id", nargs="?")
    target.add_argument("--all", action="store_true", help="every queued recipient")
    r.set_defaults(func=run_retry)

    for name, helptext, fn in (
        ("delete", "remove a message and its recipients", "delete"),
        ("hold", "keep a message from being delivered until released", "hold"),
        ("release", "let a held message be delivered again", "release"),
    ):
        a = acts.add_parser(name, help=helptext)
        add_config_arg(a)
        a.add_argument("queue_id")
        a.set_defaults(func=run_simple, op=fn)


def _with_spool(args: argparse.Namespace, fn: Callable[[Spool], Awaitable[T]]) -> T:
    config = config_from(args)
    if config.storage.backend == "postgresql":  # the cluster's queue (same operations)
        return with_pg(config, lambda db: fn(cast(Spool, PgQueue(db, "cli"))))

    async def body(db: Database) -> T:
        return await fn(Spool(db))

    return with_db(config, body)


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _when(ts: float, now: float) -> str:
    stamp = datetime.datetime.fromtimestamp(ts, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    delta = ts - now
    rel = f"in {_age(delta)}" if delta > 0 else f"{_age(-delta)} ago"
    return f"{stamp}Z ({rel})"


def run_summary(args: argparse.Namespace) -> int:
    now = SystemClock().now()
    summary = _with_spool(args, lambda s: s.summary(now, top=max(0, args.top)))
    out = sys.stdout
    states = ", ".join(f"{s}={n}" for s, n in summary.by_state) or "empty"
    print(f"recipients by state: {states}", file=out)
    head = ["destination", "total", *summary.buckets]
    # max() of 24 and no rows at all (nothing queued, or every recipient final) is just 24
    widths = [max([24, *(len(d) for d, _, _ in summary.rows)])] + [7] * (len(head) - 1)
    rows = [head] + [
        [d, str(total), *(str(c) for c in counts)] for d, total, counts in summary.rows
    ]
    if summary.rows:
        totals = [sum(r[1] for r in summary.rows)]
        totals += [sum(r[2][i] for r in summary.rows) for i in range(len(summary.buckets))]
        rows.append(["TOTAL", *(str(t) for t in totals)])
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        print(" ".join(cells).rstrip(), file=out)
    return 0


def run_list(args: argparse.Namespace) -> int:
    now = SystemClock().now()
    entries = _with_spool(
        args,
        lambda s: s.list(domain=args.domain, state=args.state, limit=max(1, args.limit)),
    )
    for e in entries:
        due = "" if e.state in FINAL_STATES else _when(e.next_attempt, now)
        print(
            f"{e.queue_id} {e.idx:>3} {e.state:<9} attempts={e.attempts} "
            f"age={_age(now - e.received_at)} {e.address} {('next=' + due) if due else ''}".rstrip()
        )
        if e.last_reply:
            print(f"    last reply: {e.last_reply}")
    if not entries:
        print("queue is empty" if not (args.domain or args.state) else "no matching recipients")
    return 0


def run_show(args: argparse.Namespace) -> int:
    now = SystemClock().now()
    info = _with_spool(args, lambda s: s.show(args.queue_id))
    if info is None:
        raise QueueError(f"queue show: no message {args.queue_id!r}")
    print(f"queue id:    {info.queue_id}")
    print(f"sender:      <{info.sender}>")
    print(f"user:        {info.user or '-'}  client: {info.client_ip or '-'}")
    print(f"received:    {_when(info.received_at, now)}")
    print(f"size:        {info.size}  message-id: <{info.message_id}>")
    if info.campaign:
        print(f"campaign:    {info.campaign}")
    print("recipients:")
    for r in info.recipients:
        due = "" if r.state in FINAL_STATES else _when(r.next_attempt, now)
        print(
            f"  {r.idx:>3} {r.state:<9} attempts={r.attempts} {r.address} "
            f"{('next=' + due) if due else ''}".rstrip()
        )
        if r.last_reply:
            print(f"      last reply: {r.last_reply}")
    return 0


def run_retry(args: argparse.Namespace) -> int:
    qid: str | None = None if args.all else args.queue_id

    async def act(s: Spool) -> int | None:
        if qid is not None and await s.show(qid) is None:
            return None
        return await s.retry(qid)

    n = _with_spool(args, act)
    if n is None:
        raise QueueError(f"queue retry: no message {qid!r}")
    print(f"{n} recipient(s) due now")
    return 0


def run_simple(args: argparse.Namespace) -> int:
    op = args.op

    async def act(s: Spool) -> int | None:
        if await s.show(args.queue_id) is None:
            return None
        fn: Callable[[str], Awaitable[int]] = getattr(s, op)
        return await fn(args.queue_id)

    n = _with_spool(args, act)
    if n is None:
        raise QueueError(f"queue {op}: no message {args.queue_id!r}")
    verb = {"delete": "deleted", "hold": "held", "release": "released"}[op]
    print(f"{args.queue_id}: {n} recipient(s) {verb}")
    return 0
