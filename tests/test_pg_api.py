"""A node on PostgreSQL with the HTTP send API and the admin API on: a key made in the
cluster's database sends through the node (``POST /v3/mail/send``, a stored template, an
Idempotency-Key retry, a send batch) to the test MX, and the admin API answers with an admin
token made in the database (events, stats, queue, users, templates); the delivery reaches
a webhook, a tracked click is recorded and mail to the List-Unsubscribe mailto: suppresses,
all in the cluster's database."""

from __future__ import annotations

import asyncio
import dataclasses
import email
import email.policy
import json
import re
import smtplib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import pytest
from aiohttp import web

from mtaserver.admin.server import build_web_app
from mtaserver.api.auth import authenticate
from mtaserver.config.storage import PostgresConfig
from mtaserver.storage.postgres.apikeys import PgApiKeyStore
from mtaserver.storage.postgres.db import PgDatabase
from mtaserver.storage.postgres.templates import PgTemplateStore
from mtaserver.storage.postgres.tokens import PgTokenStore
from mtaserver.storage.postgres.users import PgUserStore
from tests.pg import PgServer, pg_dsn, pg_server  # noqa: F401
from tests.support.daemon import Daemon, TestConfig, free_port
from tests.support.mxsink import SinkGroup, SinkState, eventually, wait_for
from tests.support.webhook_receiver import Receiver


@dataclass
class Node:
    daemon: Daemon
    sink: SinkState
    db: PgDatabase
    api: str  # base URL of the send API
    key: str
    admin: str  # base URL of the admin API
    token: str  # an admin token
    rx: Receiver  # the [[webhooks]] endpoint
    track: str  # the tracking endpoint's base URL
    inbound: tuple[str, int]  # the bounce (and unsubscribe mail) listener


@pytest.fixture
async def node(pg_server: PgServer, pg_dsn: str, tmp_path: Path) -> AsyncIterator[Node]:  # noqa: F811
    """A node with the send API on, the user ``app`` (sender.test) and a key of it."""
    db = PgDatabase(PostgresConfig(dsn=pg_dsn, tls="disable", pool_size=2))
    await db.open()
    await PgUserStore(db).add("app", "scrypt$unused", ["sender.test"])
    (tmp_path / "pgpass").write_text(pg_server.password + "\n")
    rx = Receiver(b"a webhook secret of the test")
    await rx.start()
    async with SinkGroup(["127.0.0.2"]) as sinks:
        cfg = TestConfig(tmp_path, tls=False)
        cfg.data["webhooks"] = [{"url": f"http://127.0.0.1:{rx.port}/hook",
                                 "secret": "a webhook secret of the test", "events": ["delivered"]}]  # fmt: skip
        cfg.set("storage", backend="postgresql", dsn=pg_dsn.replace(f":{pg_server.password}@", "@"),
                password_file=str(tmp_path / "pgpass"), tls="disable", pool_size=4)  # fmt: skip
        cfg.set("delivery", relay_host=f"127.0.0.2:{sinks.port}", tls="none")
        cfg.set("shaping", poll_interval="20ms")
        cfg.set("api", listen=f"127.0.0.1:{free_port()}")
        cfg.set("admin", listen=f"127.0.0.1:{free_port()}")
        track = f"127.0.0.1:{free_port()}"
        inbound = f"127.0.0.1:{free_port()}"
        cfg.set("inbound", listen=inbound, bounce_domain="bounces.test")
        cfg.set("tracking", listen=track, base_url=f"http://{track}", clicks=True,
                unsubscribe=True, unsubscribe_mailto="unsubscribe@bounces.test")  # fmt: skip
        daemon = Daemon(cfg)
        await asyncio.to_thread(daemon.start)
        # The operator's commands work on the cluster's database.
        key = await cli(
            daemon, "apikey", "create", "--user", "app", "--scopes", "mail.send,mail.batch"
        )
        token = await cli(daemon, "admin", "token", "create", "--name", "ops")
        host, port = cfg.address("api", "listen")
        ahost, aport = cfg.address("admin", "listen")
        admin = f"http://{ahost}:{aport}"
        try:
            yield Node(daemon, sinks["127.0.0.2"], db, f"http://{host}:{port}", key, admin, token,
                       rx, f"http://{track}", cfg.address("inbound", "listen"))  # fmt: skip
        finally:
            code = await asyncio.to_thread(daemon.stop)
            await db.close()
            await rx.stop()
        assert code == 0, daemon.log()[-3000:]


async def cli(daemon: Daemon, *args: str) -> str:
    out = await asyncio.to_thread(daemon.cli, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


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


async def admin_get(n: Node, path: str, token: str | None = None) -> Any:
    """The JSON answer, or the status when it is not 200."""
    h = {"Authorization": f"Bearer {n.token if token is None else token}"}
    async with aiohttp.ClientSession() as http, http.get(n.admin + path, headers=h) as r:
        return await r.json() if r.status == 200 else r.status


def received(n: Node, rcpt: str) -> list[bytes]:
    return [m.data for m in n.sink.messages if rcpt in m.rcpt_tos]


async def test_a_postgresql_node_serves_the_send_and_admin_apis(node: Node) -> None:
    """One daemon for both parts (a daemon start is most of the time)."""
    await send_admin_webhooks_tracking(node)
    await templates_idempotency_and_batches(node)


async def send_admin_webhooks_tracking(node: Node) -> None:
    html = '<p>hello <a href="https://shop.example/spring">spring</a></p>'
    content = [{"type": "text/plain", "value": "hello from the cluster"},
               {"type": "text/html", "value": html}]  # fmt: skip
    status, text, msg_id = await post(node, "/v3/mail/send", mail("one@dest.test",
                                                                   content=content))  # fmt: skip
    assert status == 202, text
    await wait_for(lambda: bool(received(node, "one@dest.test")), 20)
    assert b"hello from the cluster" in received(node, "one@dest.test")[0]

    async def state() -> str:  # the queue it went through is the cluster's
        async with node.db.connection() as conn:
            return str(
                await conn.fetchval("SELECT state FROM recipients WHERE address='one@dest.test'")
            )

    assert await eventually(state, lambda v: v == "delivered", 20) == "delivered" and msg_id
    # A key nobody made is refused.
    bad = dataclasses.replace(node, key="SG.nope.nope")
    assert (await post(bad, "/v3/mail/send", mail("x@dest.test")))[0] == 401
    # The admin API on the same node answers from the cluster's database.
    events = await admin_get(node, "/api/v1/events?type=delivered")
    assert [e["recipient"] for e in events["events"]] == ["one@dest.test"]
    stats = await admin_get(node, "/api/v1/stats?since=1h")
    assert stats["delivered"] == 1 and stats["messages"] == 1, stats
    summary = await admin_get(node, "/api/v1/queue/summary")
    assert summary["by_state"].get("delivered") == 1, summary
    users = await admin_get(node, "/api/v1/users")
    assert [u["name"] for u in users["users"]] == ["app"]
    assert await admin_get(node, "/api/v1/events", token="mta_wrong") == 401
    h = {"Authorization": f"Bearer {node.token}"}
    async with aiohttp.ClientSession() as http, http.get(node.admin + "/metrics", headers=h) as r:
        metrics = await r.text()
    assert r.status == 200 and "mtaserver_webhook_backlog{" in metrics, metrics[:2000]
    assert "# TYPE mtaserver_queue_recipients gauge" in metrics
    export = await admin_get(node, "/api/v1/privacy/export?address=a@b.example")
    assert export["address"] == "a@b.example" and export["contacts"] == [], export
    # The delivery reached the webhook, from the cluster's outbox, and left it.
    await wait_for(lambda: any(e["recipient"] == "one@dest.test" for e in node.rx.received), 20)
    assert [e["type"] for e in node.rx.received] == ["delivered"]

    async def outbox_rows() -> int:
        async with node.db.connection() as conn:
            return int(await conn.fetchval("SELECT count(*) FROM webhook_outbox"))

    assert await eventually(outbox_rows, lambda n: n == 0, 10) == 0  # settled: delivered
    status = (await cli(node.daemon, "webhooks", "status")).splitlines()
    assert status[1].split()[1:] == ["0", "0", "0"], status  # pending, waiting, failed
    # The link was signed for tracking; a click on it is recorded in the cluster's log.
    raw = received(node, "one@dest.test")[0].replace(b"=\r\n", b"").replace(b"=3D", b"=")
    found = re.search(rb'href="(' + re.escape(node.track.encode()) + rb'/[^"]+)"', raw)
    assert found, raw.decode(errors="replace")
    async with (
        aiohttp.ClientSession() as http,
        http.get(found.group(1).decode(), allow_redirects=False) as r,
    ):
        assert r.status == 302 and r.headers["Location"] == "https://shop.example/spring"

    async def clicks() -> Any:
        return await admin_get(node, "/api/v1/events?type=click")

    seen = await eventually(clicks, lambda v: bool(v["events"]), 20)
    assert [(e["recipient"], e["data"]["url"]) for e in seen["events"]] == [
        ("one@dest.test", "https://shop.example/spring")]  # fmt: skip
    # Mail to the List-Unsubscribe mailto: at the bounce listener suppresses the address.
    msg = email.message_from_bytes(received(node, "one@dest.test")[0], policy=email.policy.default)
    (mailto,) = [u for u in re.findall(r"<([^>]+)>", str(msg["List-Unsubscribe"]))
                 if u.startswith("mailto:")]  # fmt: skip
    to, subject = unquote(urlsplit(mailto).path), parse_qs(urlsplit(mailto).query)["subject"][0]

    def unsubscribe() -> tuple[int, bytes]:
        with smtplib.SMTP(*node.inbound, timeout=30) as client:
            client.ehlo("mail.dest.test")
            client.mail("one@dest.test")
            client.rcpt(to)
            return client.data(f"From: one@dest.test\r\nTo: {to}\r\nSubject: {subject}\r\n\r\n")

    assert await asyncio.to_thread(unsubscribe) == (250, b"2.0.0 Unsubscribed")
    listed = await admin_get(node, "/api/v1/suppressions")
    assert [(x["address"], x["scope"], x["reason"]) for x in listed["suppressions"]] == [
        ("one@dest.test", "sender.test", "unsubscribe")], listed  # fmt: skip


async def templates_idempotency_and_batches(node: Node) -> None:
    (node.daemon.config.dir / "hello.txt").write_text("Dear {{name}}")
    await cli(node.daemon, "template", "put", "hello", "--subject", "Hi {{name}}",
              "--text", str(node.daemon.config.dir / "hello.txt"))  # fmt: skip
    info = await PgTemplateStore(node.db).info("hello")
    assert info is not None and info.versions == (1,)
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
    templates = await admin_get(node, "/api/v1/templates")
    assert [t["name"] for t in templates["templates"]] == ["hello"], templates


async def test_keys_that_cannot_be_checked_are_unavailable_not_errors(pg_dsn: str) -> None:  # noqa: F811
    """PostgreSQL unreachable: an API key or an admin token that cannot be checked is
    answered 503 with Retry-After by the API's and the admin API's own auth, over HTTP,
    so a caller is never accepted unchecked nor answered 500."""
    db = PgDatabase(PostgresConfig(dsn=pg_dsn, tls="disable", pool_size=1))
    await db.open()
    keys, tokens = PgApiKeyStore(db), PgTokenStore(db)
    await PgUserStore(db).add("app", "scrypt$unused", ["sender.test"])
    _, key = await keys.create("app", frozenset({"mail.send"}))
    _, token = await tokens.create("ops")

    async def send(request: web.Request) -> web.Response:
        _, refused = await authenticate(SimpleNamespace(keys=keys), request, "mail.send")  # type: ignore[arg-type]
        if refused is None:
            return web.Response(status=202)
        return web.Response(status=refused.status, body=refused.body, headers=refused.headers)

    api = web.Application()
    api.router.add_post("/v3/mail/send", send)

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({})

    admin = build_web_app(lambda app: app.router.add_get("/x", ok), tokens.verify,
                          monotonic=asyncio.get_running_loop().time)  # fmt: skip
    runners = [web.AppRunner(app, access_log=None) for app in (api, admin)]
    ports = []
    for r in runners:
        await r.setup()
        site = web.TCPSite(r, "127.0.0.1", 0)
        await site.start()
        ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as http:

            async def both(k: str, t: str) -> list[tuple[int, str | None]]:
                out = []
                for url, bearer in ((f"http://127.0.0.1:{ports[0]}/v3/mail/send", k),
                                    (f"http://127.0.0.1:{ports[1]}/x", t)):  # fmt: skip
                    method = http.post if url.endswith("send") else http.get
                    async with method(url, headers={"Authorization": f"Bearer {bearer}"}) as r:
                        out.append((r.status, r.headers.get("Retry-After")))
                return out

            assert await both(key, token) == [(202, None), (200, None)]
            assert await both(key + "x", token + "x") == [(401, None), (401, None)]
            await db.close()  # as if the server were gone: every check fails
            assert await both(key, token) == [(503, "30"), (503, "30")]
    finally:
        for r in runners:
            await r.cleanup()
