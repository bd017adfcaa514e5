"""Three real mtaserver processes on one PostgreSQL database, delivering to one test MX.

Messages are submitted round-robin over SMTP to the three nodes; every recipient must reach
the sink exactly once. Then the same with kill -9 of one node mid-run: its leases expire and
the other two take its work over — nobody lost, and only what the dead node had in flight
may arrive twice. A hard bounce seen by one node suppresses the address on the others.
"""

from __future__ import annotations

import asyncio
import collections
import smtplib
import socket
import ssl
from pathlib import Path

import asyncpg

from tests.pg import PgServer, migrated, pg_dsn, pg_server  # noqa: F401
from tests.support.daemon import Daemon, TestConfig, free_port
from tests.support.mxsink import SinkGroup, eventually, wait_for

N = 240
WORKERS = 4  # delivery connections per node


def node_config(
    tmp_path: Path, i: int, pg: PgServer, dsn: str, sink_port: int, *, tls: bool = False
) -> TestConfig:
    (tmp_path / "pgpass").write_text(pg.password + "\n")
    (tmp_path / f"node{i}").mkdir(exist_ok=True)
    cfg = TestConfig(tmp_path / f"node{i}", tls=tls)
    cfg.set("server", hostname=f"mta{i}.test")
    cfg.set("cluster", node_id=f"node-{i}")
    cfg.set(
        "storage",
        backend="postgresql",
        dsn=dsn.replace(f":{pg.password}@", "@"),  # the password comes from the file
        password_file=str(tmp_path / "pgpass"),
        tls="disable",
        pool_size=4,
    )
    cfg.set(
        "delivery",
        relay_host=f"127.0.0.2:{sink_port}",
        tls="none",
        max_connections=WORKERS,
        lease="2s",  # a dead node's work comes back within seconds
        nameservers=["127.0.0.1:9"],
    )
    cfg.set("shaping", poll_interval="20ms")
    cfg.set("shaping.default", max_connections=WORKERS, max_rate="60/s")
    return cfg


def submit(cfgs: list[TestConfig], n: int, tag: str, start: int = 0) -> None:
    """n messages (numbered from ``start``), one recipient each, round-robin over the
    nodes' plain listeners."""
    conns = []
    for cfg in cfgs:
        host, port = cfg.address("submission", "listen_plain")
        s = smtplib.SMTP(host, port, timeout=20)
        s.ehlo()
        conns.append(s)
    try:
        for i in range(start, start + n):
            body = f"Subject: {tag} {i}\r\nFrom: app@sender.test\r\n\r\nbody {i}\r\n"
            conns[(i - start) % len(conns)].sendmail(
                "app@sender.test", [f"{tag}{i}@dest.test"], body
            )
    finally:
        for s in conns:
            s.quit()


async def states(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT state, count(*) FROM recipients GROUP BY state")
        return {r[0]: int(r[1]) for r in rows}
    finally:
        await conn.close()


async def test_three_nodes_deliver_each_message_exactly_once(
    tmp_path: Path,
    pg_server: PgServer,  # noqa: F811
    pg_dsn: str,  # noqa: F811
) -> None:
    await migrated(pg_dsn)
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        cfgs = [node_config(tmp_path, i, pg_server, pg_dsn, sinks.port) for i in range(3)]
        nodes = [Daemon(c) for c in cfgs]
        try:
            await asyncio.gather(*(asyncio.to_thread(d.start) for d in nodes))
            await asyncio.to_thread(submit, cfgs, N, "u")
            want = {f"u{i}@dest.test" for i in range(N)}
            await wait_for(lambda: {r for m in sink.messages for r in m.rcpt_tos} >= want, 60)
        finally:
            codes = await asyncio.gather(*(asyncio.to_thread(d.stop) for d in nodes))
        assert codes == [0, 0, 0], [d.log()[-3000:] for d in nodes]
    counts = collections.Counter(r for m in sink.messages for r in m.rcpt_tos)
    assert set(counts) == want and set(counts.values()) == {1}, counts.most_common(3)
    assert await states(pg_dsn) == {"delivered": N}
    # Each node delivered a share: the queue is shared, not partitioned by who accepted.
    for d in nodes:
        assert "status=delivered" in d.log()


async def test_kill_9_of_one_node_loses_nothing(
    tmp_path: Path,
    pg_server: PgServer,  # noqa: F811
    pg_dsn: str,  # noqa: F811
) -> None:
    await migrated(pg_dsn)
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        cfgs = [node_config(tmp_path, i, pg_server, pg_dsn, sinks.port) for i in range(3)]
        nodes = [Daemon(c) for c in cfgs]
        try:
            await asyncio.gather(*(asyncio.to_thread(d.start) for d in nodes))
            # Half over every node; the rest over the two that live, still being submitted
            # when node 0 dies, so the kill always lands mid-run.
            await asyncio.to_thread(submit, cfgs, N // 2, "k")
            rest = asyncio.create_task(asyncio.to_thread(submit, cfgs[1:], N - N // 2, "k", N // 2))
            await wait_for(lambda: len(sink.messages) >= N // 4, 60)
            await asyncio.to_thread(nodes[0].kill)
            at_kill = len(sink.messages)
            await rest
            assert at_kill < N, "everything was delivered before the kill; nothing was tested"
            want = {f"k{i}@dest.test" for i in range(N)}
            await wait_for(lambda: {r for m in sink.messages for r in m.rcpt_tos} >= want, 60)
            left = await eventually(lambda: states(pg_dsn), lambda s: s == {"delivered": N})
            assert left == {"delivered": N}
        finally:
            codes = await asyncio.gather(*(asyncio.to_thread(d.stop) for d in nodes[1:]))
        assert codes == [0, 0], [d.log()[-3000:] for d in nodes[1:]]
    counts = collections.Counter(r for m in sink.messages for r in m.rcpt_tos)
    assert set(counts) == want
    twice = [r for r, n in counts.items() if n > 1]
    assert all(counts[r] == 2 for r in twice)
    assert len(twice) <= WORKERS, twice  # only what the dead node had in flight


async def test_a_hard_bounce_on_one_node_is_refused_at_rcpt_on_another(
    tmp_path: Path,
    pg_server: PgServer,  # noqa: F811
    pg_dsn: str,  # noqa: F811
) -> None:
    await migrated(pg_dsn)
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        sink.rcpt_replies["gone@dest.test"] = "550 5.1.1 <gone@dest.test>: no such user"
        cfgs = [node_config(tmp_path, i, pg_server, pg_dsn, sinks.port) for i in range(2)]
        nodes = [Daemon(c) for c in cfgs]
        try:
            await asyncio.gather(*(asyncio.to_thread(d.start) for d in nodes))
            # Node 0 accepts it; whichever node delivers it sees the 550 at RCPT.
            await asyncio.to_thread(
                lambda: smtplib.SMTP(*cfgs[0].address("submission", "listen_plain")).sendmail(
                    "app@sender.test", ["gone@dest.test"], "Subject: x\r\n\r\nx\r\n"
                )
            )

            async def refused(i: int) -> bool:
                def probe() -> int:
                    host, port = cfgs[i].address("submission", "listen_plain")
                    with smtplib.SMTP(host, port, timeout=10) as s:
                        s.ehlo()
                        s.mail("app@sender.test")
                        return s.rcpt("gone@dest.test")[0]

                return await asyncio.to_thread(probe) == 550

            async def both_refuse() -> bool:
                return await refused(0) and await refused(1)

            assert await eventually(both_refuse, bool, 15)
            # The sender gets its DSN, queued and delivered through the shared queue too.
            await wait_for(
                lambda: any(m.rcpt_tos == ["app@sender.test"] for m in sink.messages), 30
            )
            dsn = next(m for m in sink.messages if m.rcpt_tos == ["app@sender.test"])
            assert b"multipart/report" in dsn.data and b"gone@dest.test" in dsn.data
        finally:
            codes = await asyncio.gather(*(asyncio.to_thread(d.stop) for d in nodes))
        assert codes == [0, 0], [d.log()[-3000:] for d in nodes]


async def test_a_user_added_by_the_cli_logs_in_on_every_node(
    tmp_path: Path,
    pg_server: PgServer,  # noqa: F811
    pg_dsn: str,  # noqa: F811
) -> None:
    """``mtaserver user add`` writes the cluster's users table; any node then accepts AUTH,
    and a command that only knows the SQLite file (backup) refuses instead of copying it."""
    await migrated(pg_dsn)
    async with SinkGroup(["127.0.0.2"]) as sinks:
        cfgs = [node_config(tmp_path, i, pg_server, pg_dsn, sinks.port, tls=True) for i in range(2)]
        nodes = [Daemon(c) for c in cfgs]
        try:
            await asyncio.gather(*(asyncio.to_thread(d.start) for d in nodes))
            added = nodes[0].cli(
                "user", "add", "app", "--domain", "sender.test", "--password-stdin",
                input=b"correct horse battery\n",
            )  # fmt: skip
            assert added.returncode == 0, added.stderr
            listed = nodes[1].cli("user", "list")
            assert listed.returncode == 0 and "app" in listed.stdout
            other = nodes[1].cli("backup", str(tmp_path / "copy.db"))
            assert other.returncode != 0 and "pg_dump" in other.stderr + other.stdout
            assert not (tmp_path / "copy.db").exists()
            assert nodes[1].cli("queue", "summary").returncode == 0  # the cluster's queue

            def login(i: int, password: str) -> int:
                host, port = cfgs[i].address("submission", "listen")
                ctx = ssl.create_default_context()
                cfgs[i].ca.configure_trust(ctx)
                with smtplib.SMTP(host, port, timeout=10) as s:
                    s.starttls(context=ctx)
                    s.ehlo()
                    try:
                        return s.login("app", password)[0]
                    except smtplib.SMTPAuthenticationError as exc:
                        return exc.smtp_code

            assert await asyncio.to_thread(login, 1, "correct horse battery") == 235
            assert await asyncio.to_thread(login, 0, "wrong password here") == 535
        finally:
            codes = await asyncio.gather(*(asyncio.to_thread(d.stop) for d in nodes))
        assert codes == [0, 0], [d.log()[-3000:] for d in nodes]


async def test_an_async_bounce_at_one_node_suppresses_on_the_other(
    tmp_path: Path,
    pg_server: PgServer,  # noqa: F811
    pg_dsn: str,  # noqa: F811
) -> None:
    """Node 1 accepts and delivers; the remote MTA's later bounce reaches node 0's bounce
    listener (the nodes share ``secret_file``, so either verifies the VERP return path);
    node 1 then refuses the address at RCPT."""
    await migrated(pg_dsn)
    secret = tmp_path / "verp.key"
    secret.write_text("ab" * 32 + "\n")
    inbound_port = free_port()
    async with SinkGroup(["127.0.0.2"]) as sinks:
        sink = sinks["127.0.0.2"]
        cfgs = [node_config(tmp_path, i, pg_server, pg_dsn, sinks.port) for i in range(2)]
        for c in cfgs:
            c.set("server", secret_file=str(secret))
            c.set("inbound", bounce_domain="bounces.test")
        cfgs[0].set("inbound", listen=f"127.0.0.1:{inbound_port}")
        nodes = [Daemon(c) for c in cfgs]
        try:
            await asyncio.gather(*(asyncio.to_thread(d.start) for d in nodes))
            await asyncio.to_thread(submit, cfgs[1:], 1, "late")
            await wait_for(lambda: len(sink.messages) == 1, 30)
            return_path = sink.messages[0].mail_from
            assert return_path.endswith("@bounces.test")

            def bounce() -> int:
                with smtplib.SMTP("127.0.0.1", inbound_port, timeout=10) as s:
                    s.ehlo("remote.example")
                    s.mail("<>")
                    assert s.rcpt(return_path)[0] == 250
                    return s.data(
                        b"From: MAILER-DAEMON@dest.test\r\nSubject: failure notice\r\n\r\n"
                        b"<late0@dest.test>:\r\nSorry, no mailbox here by that name. (#5.1.1)\r\n"
                    )[0]

            assert await asyncio.to_thread(bounce) == 250

            def rcpt_code() -> int:
                host, port = cfgs[1].address("submission", "listen_plain")
                with smtplib.SMTP(host, port, timeout=10) as s:
                    s.ehlo()
                    s.mail("app@sender.test")
                    return s.rcpt("late0@dest.test")[0]

            code = await eventually(lambda: asyncio.to_thread(rcpt_code), lambda c: c == 550, 10)
            assert code == 550
        finally:
            codes = await asyncio.gather(*(asyncio.to_thread(d.stop) for d in nodes))
        assert codes == [0, 0], [d.log()[-3000:] for d in nodes]


async def test_postgresql_down_answers_451_never_250(tmp_path: Path) -> None:
    """With its database gone, a node answers submissions 451 (nothing acknowledged that is
    not stored), keeps running, and stops cleanly."""
    import os
    import signal

    from tests.pg import running_server

    with running_server() as server:
        server.psql("CREATE DATABASE solo")
        dsn = server.dsn_with_password("solo")
        await migrated(dsn)
        async with SinkGroup(["127.0.0.2"]) as sinks:
            cfg = node_config(tmp_path, 0, server, dsn, sinks.port)
            node = Daemon(cfg)
            await asyncio.to_thread(node.start)
            try:
                await asyncio.to_thread(submit, [cfg], 1, "before")
                await wait_for(lambda: len(sinks["127.0.0.2"].messages) == 1, 30)
                os.kill(server.pid, signal.SIGINT)  # fast shutdown: connections dropped

                def refused() -> bool:
                    try:
                        socket.create_connection((server.host, server.port), 0.5).close()
                    except OSError:
                        return True
                    return False

                # SIGINT only starts the shutdown: a submission racing it may still be stored.
                await wait_for(refused, 30)

                def attempt() -> int:
                    host, port = cfg.address("submission", "listen_plain")
                    with smtplib.SMTP(host, port, timeout=30) as s:
                        s.ehlo()
                        s.mail("app@sender.test")
                        code, _ = s.rcpt("after@dest.test")  # the suppression check
                        if code != 250:
                            return code
                        return s.data(b"Subject: x\r\n\r\nx\r\n")[0]

                codes = [await asyncio.to_thread(attempt) for _ in range(3)]
                assert all(400 <= c < 500 for c in codes), codes
            finally:
                code = await asyncio.to_thread(node.stop)
            assert code == 0, node.log()[-3000:]
            # The node reports the outage on its own lines, not through the driver's logger.
            log = node.log()
            assert "suppression_check_failed" in log and "Failed to restore" not in log
