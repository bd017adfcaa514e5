"""``mtaserver queue …`` against a running daemon (a real process) and its live database."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from mtaserver.model import PreparedMessage, PreparedRecipient
from mtaserver.storage.sqlite.queue import new_queue_id
from tests.support.daemon import Daemon, TestConfig, free_port, open_stores


async def _fill(cfg: TestConfig, now: float) -> list[str]:
    async with open_stores(cfg) as stores:
        spool = stores.spool
        qids = []
        for i, (age, rcpts) in enumerate(
            [
                (60, ["a@gmail.test", "b@gmail.test"]),
                (7200, ["c@yahoo.test"]),
                (3 * 86400, ["d@gmail.test", "e@other.test"]),
            ]
        ):
            qid = new_queue_id(now - age)
            qids.append(qid)
            await spool.enqueue(
                PreparedMessage(
                    queue_id=qid,
                    sender=f"app{i}@sender.test",
                    recipients=tuple(PreparedRecipient(r) for r in rcpts),
                    data=b"Subject: x\r\n\r\nbody\r\n",
                    user="app",
                    client_ip="127.0.0.1",
                    received_at=now - age,
                    message_id=f"m{i}@sender.test",
                )
            )
    # keep them off the delivery path while the CLI looks at them: due in an hour
    await asyncio.to_thread(cfg.query, "UPDATE recipients SET next_attempt=?", now + 3600)
    return qids


def test_queue_commands_while_the_daemon_runs(tmp_path: Path) -> None:
    cfg = TestConfig(tmp_path, tls=False)
    # nothing reachable: anything the daemon tries to deliver is deferred, never sent
    cfg.set("delivery", relay_host=f"127.0.0.1:{free_port()}", nameservers=["127.0.0.1:9"])
    Path(cfg.data["server"]["data_dir"]).mkdir(parents=True, exist_ok=True)
    # filled before the daemon starts, so it never sees these recipients due
    q1, q2, q3 = asyncio.run(_fill(cfg, time.time()))
    with Daemon(cfg) as d:
        out = d.cli("queue", "summary")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert "queued=5" in lines[0]
        header = lines[1].split()
        assert header[:2] == ["destination", "total"] and "5m" in header
        rows = {ln.split()[0]: ln.split()[1:] for ln in lines[2:]}
        assert rows["gmail.test"][0] == "3"
        assert rows["yahoo.test"][0] == "1" and rows["other.test"][0] == "1"
        assert rows["TOTAL"][0] == "5"
        # ages: two gmail recipients under 5 minutes, one 3 days old
        buckets = header[2:]
        gmail = dict(zip(buckets, map(int, rows["gmail.test"][1:]), strict=True))
        assert gmail["5m"] == 2 and gmail["5d"] == 1

        out = d.cli("queue", "list", "--domain", "gmail.test")
        assert out.returncode == 0, out.stderr
        listed = [ln for ln in out.stdout.splitlines() if not ln.startswith(" ")]
        assert len(listed) == 3 and all("@gmail.test" in ln for ln in listed)

        out = d.cli("queue", "show", q3)
        assert out.returncode == 0, out.stderr
        assert "<app2@sender.test>" in out.stdout
        assert "d@gmail.test" in out.stdout and "e@other.test" in out.stdout

        out = d.cli("queue", "hold", q2)
        assert out.returncode == 0 and "1 recipient(s) held" in out.stdout
        out = d.cli("queue", "list", "--state", "held")
        assert q2 in out.stdout and q1 not in out.stdout
        out = d.cli("queue", "release", q2)
        assert out.returncode == 0 and "1 recipient(s) released" in out.stdout

        out = d.cli("queue", "delete", q1)
        assert out.returncode == 0 and "2 recipient(s) deleted" in out.stdout
        out = d.cli("queue", "show", q1)
        assert out.returncode == 2
        assert "no message" in out.stderr and "Traceback" not in out.stderr

        for args in (("retry", "NOPE"), ("hold", "NOPE"), ("delete", "NOPE")):
            out = d.cli("queue", *args)
            assert out.returncode == 2 and "no message 'NOPE'" in out.stderr, args

        out = d.cli("queue", "retry", "--all")
        assert out.returncode == 0, out.stderr
        assert "recipient(s) due now" in out.stdout

        out = d.cli("queue", "summary")
        assert "gmail.test" in out.stdout and out.returncode == 0
