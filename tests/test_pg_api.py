"""A node on PostgreSQL with the HTTP send API on: a key made in the cluster's database sends
through the node (``POST /v3/mail/send``, a stored template, an Idempotency-Key retry, a
send batch) to the test MX; a real daemon per case."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from mtaserver.config.storage import PostgresConfig
from mtaserver.storage.postgres.apikeys import PgApiKeyStore
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.templates import PgTemplateStore
from mtaserver.storage.postgres.users import PgUserStore
from tests.pg import PgServer, pg_dsn, pg_server  # noqa: F401
from tests.support.daemon import Daemon, TestConfig, free_port
from tests.support.mxsink import SinkGroup, SinkState, wait_for


@dataclass
class Node:
    daemon: Daemon
    sink: SinkState
    db: PgDatabase
    api: str  # base URL of the send API
    key: str


@pytest.fixture
async def node(pg_server: PgServer, pg_dsn: str, tmp_path: Path) -> AsyncIterator[Node]:  # noqa: F811
    """A node with the send API on, the user ``app`` (sender.test) and a key of it."""
    db = PgDatabase(PostgresConfig(dsn=pg_dsn, tls="disable", pool_size=2))
    await db.open()
    await PgUserStore(db).add("app", "scrypt$unused", ["sender.test"])
    _, key = await PgApiKeyStore(db).create("app", frozenset({"mail.send", "mail.batch.create"}))
    (tmp_path / "pgpass").write_text(pg_server.password + "\n")
    async with SinkGroup(["127.0.0.2"]) as sinks:
        cfg = TestConfig(tmp_path, tls=False)
        cfg.set("storage", backend="postgresql", dsn=pg_dsn.replace(f":{pg_server.password}@", "@"),
                password_file=str(tmp_path / "pgpass"), tls="disable", pool_size=4)  # fmt: skip
        cfg.set("delivery", relay_host=f"127.0.0.2:{sinks.port}", tls="none")
        cfg.set("shaping", poll_interval="20ms")
        cfg.set("api", listen=f"127.0.0.1:{free_port()}")
        daemon = Daemon(cfg)
        await asyncio.to_thread(daemon.start)
        host, port = cfg.address("api", "listen")
        try:
            yield Node(daemon, sinks["127.0.0.2"], db, f"http://{host}:{port}", key)
        finally:
            code = await asyncio.to_thread(daemon.stop)
            await db.close()
        assert code == 0, daemon.log()[-3000:]


def mail(to: str, **extra: object) -> dict[str, object]:
    return {
        "personalizations": [{"to": [{"email": to}]}],
        "from": {"email": "app@sender.test"},
        "subject": "hi",
        "content": [{"type": "text/plain", "value": "hello from the cluster"}],
        **extra,
    }


async def post(n: Node, path: str, body: object, **headers: str) -> tuple[int, str, str]:
    h = {"Authorization": f"Bearer {n.key}", **headers}
    async with aiohttp.ClientSession() as http, http.post(n.api + path, json=body, headers=h) as r:
        return r.status, await r.text(), r.headers.get("X-Message-Id", "")


def received(n: Node, rcpt: str) -> list[bytes]:
    return [m.data for m in n.sink.messages if rcpt in m.rcpt_tos]


async def test_send_api_delivers_through_a_postgresql_node(node: Node) -> None:
    status, text, msg_id = await post(node, "/v3/mail/send", mail("one@dest.test"))
    assert status == 202, text
    await wait_for(lambda: bool(received(node, "one@dest.test")), 20)
    assert b"hello from the cluster" in received(node, "one@dest.test")[0]
    async with node.db.connection() as conn:  # the queue it went through is the cluster's
        state = await conn.fetchval("SELECT state FROM recipients WHERE address = 'one@dest.test'")
    assert state == "delivered" and msg_id
    # A key nobody made is refused.
    bad = Node(node.daemon, node.sink, node.db, node.api, "SG.nope.nope")
    assert (await post(bad, "/v3/mail/send", mail("x@dest.test")))[0] == 401


async def test_templates_idempotency_and_batches_are_the_clusters(node: Node) -> None:
    info = await PgTemplateStore(node.db).put("hello", "Hi {{name}}", None, "Dear {{name}}")
    body = mail("tpl@dest.test", template_id=info.template_id)
    body.pop("content")
    body.pop("subject")
    body["personalizations"] = [{"to": [{"email": "tpl@dest.test"}],
                                 "dynamic_template_data": {"name": "Ada"}}]  # fmt: skip
    first = await post(node, "/v3/mail/send", body, **{"Idempotency-Key": "k-1"})
    again = await post(node, "/v3/mail/send", body, **{"Idempotency-Key": "k-1"})
    assert first[0] == again[0] == 202 and first[2] == again[2], (first, again)
    await wait_for(lambda: bool(received(node, "tpl@dest.test")), 20)
    assert b"Dear Ada" in received(node, "tpl@dest.test")[0]
    status, text, _ = await post(node, "/v3/mail/batch", None)
    assert status == 201, text
    batch_id = json.loads(text)["batch_id"]
    async with node.db.connection() as conn:
        assert await conn.fetchval("SELECT count(*) FROM batches WHERE id=$1", batch_id) == 1
        # The retry queued nothing: one message for the address in the cluster's queue.
        n = await conn.fetchval("SELECT count(*) FROM recipients WHERE address='tpl@dest.test'")
    assert n == 1
