"""The admin API against a running daemon: every endpoint, auth failures, and every response
validated against mtaserver/admin/openapi.json."""

from __future__ import annotations

import asyncio
import http.client
import json
import smtplib
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mtaserver.dkim import keys as K
from mtaserver.model import Event, PreparedMessage, PreparedRecipient
from mtaserver.storage.sqlite.queue import new_queue_id
from tests.support.admin import AdminClient, operations
from tests.support.daemon import Daemon, TestConfig, free_port, open_stores

UNAUTHORIZED = b'{"error":"unauthorized"}'


def make_config(tmp_path: Path, *, tls: bool = False, **admin: object) -> TestConfig:
    cfg = TestConfig(tmp_path, tls=tls)
    cfg.set("admin", listen=f"127.0.0.1:{free_port()}", **admin)
    # Mail made due goes to a port nobody listens on (deferred): no DNS, nothing leaves.
    cfg.set("delivery", relay_host=f"127.0.0.1:{free_port()}")
    key_path = tmp_path / "s1.example.com.pem"
    K.write_private_key(key_path, K.generate_key(K.Algorithm.ED25519))
    cfg.data["dkim"] = [
        {"domain": "example.com", "selector": "s1", "key": str(key_path),
         "algorithm": "ed25519-sha256"},
    ]  # fmt: skip
    return cfg


def base_url(cfg: TestConfig) -> str:
    host, port = cfg.address("admin", "listen")
    return f"http://{host}:{port}"


def create_token(d: Daemon, name: str) -> str:
    r = d.cli("admin", "token", "create", "--name", name)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip()
    assert token.startswith("mta_") and len(token) > 40
    return token


def stored_token(cfg: TestConfig, name: str) -> str:
    """A token made through the token store before the daemon starts (the CLI's own path
    is tested in the auth tests; this saves a process start per test)."""

    async def run() -> str:
        async with open_stores(cfg) as stores:
            return str((await stores.tokens.create(name))[1])

    return asyncio.run(run())


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Daemon, AdminClient]]:
    cfg = make_config(tmp_path)
    token = stored_token(cfg, "tests")
    with Daemon(cfg) as d:
        yield d, AdminClient(base_url(cfg), token)


def enqueue(
    cfg: TestConfig, *messages: tuple[str, list[str]], at: float | None = None
) -> list[str]:
    """Queue messages through the real spool (as the submission pipeline does).

    They are received "in the future" by default so that no delivery stage claims them
    while a test looks at the queue.
    """
    received = time.time() + 3600 if at is None else at

    async def run() -> list[str]:
        async with open_stores(cfg) as stores:
            spool = stores.spool
            ids = []
            for sender, rcpts in messages:
                qid = new_queue_id(time.time())
                await spool.enqueue(
                    PreparedMessage(
                        queue_id=qid,
                        sender=sender,
                        recipients=tuple(PreparedRecipient(r) for r in rcpts),
                        data=b"From: a@example.com\r\nSubject: t\r\n\r\nhello\r\n",
                        user="alice",
                        client_ip="127.0.0.1",
                        received_at=received,
                        message_id=f"{qid}@mta.test",
                        campaign="spring",
                    )
                )
                ids.append(qid)
            return ids

    return asyncio.run(run())


def emit(cfg: TestConfig, *events: Event) -> None:
    async def run() -> None:
        async with open_stores(cfg) as stores:
            await stores.events.emit(*events)

    asyncio.run(run())


# -- auth ---------------------------------------------------------------------------------------
def test_auth_failures_all_look_the_same(running: tuple[Daemon, AdminClient]) -> None:
    d, api = running
    good = api.ok("GET", "/api/v1/queue/summary")
    assert "by_state" in good
    victim = create_token(d, "to-revoke")
    assert api.get("/api/v1/queue", token=victim).status == 200
    r = d.cli("admin", "token", "revoke", "to-revoke")
    assert r.returncode == 0, r.stderr
    attempts = {
        "no token": api.get("/api/v1/queue", token=None),
        "wrong token": api.get("/api/v1/queue", token="mta_" + "A" * 43),
        "not our format": api.get("/api/v1/queue", token="hunter2"),
        "revoked": api.get("/api/v1/queue", token=victim),
        "basic auth": api.get("/api/v1/queue", token=None, headers={"Authorization": "Basic YTpi"}),
        "unknown path": api.get("/api/v1/nope", token=None),
        "unknown path, revoked": api.get("/api/v1/nope", token=victim),
        "POST": api.post("/api/v1/queue/retry", token=None),
        "metrics": api.get("/metrics", token=None),
    }
    for what, resp in attempts.items():
        assert resp.status == 401, what
        assert resp.body == UNAUTHORIZED, what
        assert resp.headers["www-authenticate"] == 'Bearer realm="mtaserver"', what
    # With a good token an unknown path is a plain JSON 404.
    r404 = api.get("/api/v1/nope")
    assert r404.status == 404 and r404.json() == {"error": "not found"}
    # Listed as revoked, never with its text; only the hash is stored.
    listing = d.cli("admin", "token", "list")
    assert listing.returncode == 0
    assert "to-revoke" in listing.stdout and "revoked" in listing.stdout
    assert victim not in listing.stdout and api.token not in listing.stdout
    raw = d.config.stored_bytes()
    assert victim.encode() not in raw and (api.token or "").encode() not in raw
    assert victim not in d.log() and (api.token or "") not in d.log()


def test_token_cli_errors_and_revoke_by_id(running: tuple[Daemon, AdminClient]) -> None:
    d, api = running
    assert api.get("/api/v1/queue").status == 200
    dup = d.cli("admin", "token", "create", "--name", "tests")
    assert dup.returncode == 2 and "exists" in dup.stderr and "Traceback" not in dup.stderr
    missing = d.cli("admin", "token", "revoke", "nobody")
    assert missing.returncode == 2 and "no live token" in missing.stderr
    rows = [line.split("\t") for line in d.cli("admin", "token", "list").stdout.splitlines()]
    (live,) = [r for r in rows if r[1] == "tests"]
    assert live[-1] == "active" and live[3] != "used -"  # the fixture's token has been used
    assert d.cli("admin", "token", "revoke", live[0]).returncode == 0
    assert api.get("/api/v1/queue").status == 401


def test_https_listener(tmp_path: Path) -> None:
    """[admin] tls = true serves HTTPS with the [tls] certificate; plain HTTP gets nowhere."""
    cfg = make_config(tmp_path, tls=True)
    cfg.set("admin", tls=True)
    with Daemon(cfg) as d:
        ctx = ssl.create_default_context()
        cfg.ca.configure_trust(ctx)
        host, port = cfg.address("admin", "listen")
        api = AdminClient(f"https://{host}:{port}", create_token(d, "tls"), ssl_context=ctx)
        assert api.ok("GET", "/api/v1/queue/summary")["by_state"] == {}
        assert api.get("/api/v1/queue", token=None).status == 401
        plain = AdminClient(f"http://{host}:{port}", api.token)
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            plain.get("/api/v1/queue")


# -- queue ----------------------------------------------------------------------------------------
def test_queue_operations(running: tuple[Daemon, AdminClient]) -> None:
    d, api = running
    q1, q2, q3 = enqueue(
        d.config,
        ("a@example.com", ["x@one.test", "y@one.test"]),
        ("a@example.com", ["z@two.test"]),
        ("a@example.com", ["w@one.test"]),
    )
    summary = api.ok("GET", "/api/v1/queue/summary")
    assert summary["by_state"]["queued"] == 4
    dests = {row["domain"]: row["total"] for row in summary["destinations"]}
    assert dests == {"one.test": 3, "two.test": 1}
    assert api.ok("GET", "/api/v1/queue/summary", query={"top": 1})["destinations"][0] == {
        "domain": "one.test", "total": 3, "counts": [3, 0, 0, 0, 0, 0, 0, 0]
    }  # fmt: skip

    # Paging: 4 recipients, 3 per page.
    page1 = api.ok("GET", "/api/v1/queue", query={"limit": 3})
    assert len(page1["recipients"]) == 3 and page1["next"]
    page2 = api.ok("GET", "/api/v1/queue", query={"limit": 3, "after": page1["next"]})
    assert len(page2["recipients"]) == 1 and page2["next"] is None
    seen = [(r["queue_id"], r["idx"]) for r in page1["recipients"] + page2["recipients"]]
    assert sorted(seen) == sorted([(q1, 0), (q1, 1), (q2, 0), (q3, 0)])
    only_two = api.ok("GET", "/api/v1/queue", query={"domain": "two.test"})["recipients"]
    assert [(r["queue_id"], r["address"]) for r in only_two] == [(q2, "z@two.test")]

    shown = api.ok("GET", f"/api/v1/queue/{q1}")
    assert shown["sender"] == "a@example.com" and shown["campaign"] == "spring"
    assert [r["address"] for r in shown["recipients"]] == ["x@one.test", "y@one.test"]
    assert "body" not in shown

    assert api.ok("POST", f"/api/v1/queue/{q1}/hold") == {"queue_id": q1, "recipients": 2}
    held = api.ok("GET", "/api/v1/queue", query={"state": "held"})["recipients"]
    assert {(r["queue_id"], r["state"]) for r in held} == {(q1, "held")}
    assert api.ok("POST", f"/api/v1/queue/{q1}/hold")["recipients"] == 0
    assert api.ok("POST", f"/api/v1/queue/{q1}/release") == {"queue_id": q1, "recipients": 2}
    assert api.ok("POST", f"/api/v1/queue/{q2}/retry") == {"queue_id": q2, "recipients": 1}
    retried = api.ok("POST", "/api/v1/queue/retry")
    assert retried["queue_id"] is None and retried["recipients"] >= 1

    assert api.ok("DELETE", f"/api/v1/queue/{q3}") == {"queue_id": q3, "recipients": 1}
    for method, path in (
        ("GET", f"/api/v1/queue/{q3}"),
        ("DELETE", f"/api/v1/queue/{q3}"),
        ("POST", f"/api/v1/queue/{q3}/retry"),
        ("POST", f"/api/v1/queue/{q3}/hold"),
        ("POST", f"/api/v1/queue/{q3}/release"),
    ):
        r = api.request(method, path)
        assert r.status == 404 and r.json() == {"error": f"no message {q3}"}, (method, path)

    # The operations are the spool's: the CLI-visible database agrees.
    assert d.config.query("SELECT count(*) FROM messages WHERE id=?", q3)[0][0] == 0
    deleted = api.ok("GET", "/api/v1/events", query={"type": "deleted", "queue_id": q3})
    assert [e["type"] for e in deleted["events"]] == ["deleted"]


def test_bad_parameters_are_400(running: tuple[Daemon, AdminClient]) -> None:
    _, api = running
    for path, query in (
        ("/api/v1/queue", {"limit": "0"}),
        ("/api/v1/queue", {"limit": "many"}),
        ("/api/v1/queue", {"after": "nocolon"}),
        ("/api/v1/queue/summary", {"top": "-1"}),
        ("/api/v1/events", {"after": "-5"}),
        ("/api/v1/events", {"limit": "100000"}),
        ("/api/v1/stats", {"since": "last tuesday"}),
    ):
        api.validate = False  # the request itself violates the document, on purpose
        r = api.get(path, query=query)
        api.validate = True
        assert r.status == 400, (path, query, r.text)
        assert set(r.json()) == {"error"}


# -- events ---------------------------------------------------------------------------------------
def test_events_feed_cursor_paging(running: tuple[Daemon, AdminClient]) -> None:
    d, api = running
    start = api.ok("GET", "/api/v1/events", query={"limit": 1000})["next_after"]
    (qid,) = enqueue(d.config, ("a@example.com", ["r@one.test"]))
    now = time.time()
    emit(
        d.config,
        *(Event("open", now, qid, "r@one.test", (("n", i),)) for i in range(5)),
        Event("delivered", now, qid, "r@one.test", (("delay", 1.5),)),
    )
    got: list[dict[str, object]] = []
    cursor = start
    while True:
        page = api.ok("GET", "/api/v1/events", query={"after": cursor, "limit": 2})
        assert len(page["events"]) <= 2
        if not page["events"]:
            assert page["next_after"] == cursor  # an empty page keeps the cursor
            break
        got.extend(page["events"])
        cursor = page["next_after"]
    assert [e["type"] for e in got] == ["accepted"] + ["open"] * 5 + ["delivered"]
    ids = [e["id"] for e in got]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert [e["data"]["n"] for e in got if e["type"] == "open"] == [0, 1, 2, 3, 4]
    only = api.ok("GET", "/api/v1/events",
                  query={"after": start, "type": "delivered,accepted", "queue_id": qid})  # fmt: skip
    assert [e["type"] for e in only["events"]] == ["accepted", "delivered"]


# -- stats, DKIM, DNS -----------------------------------------------------------------------------
def test_stats_match_the_cli(running: tuple[Daemon, AdminClient]) -> None:
    d, api = running
    (q1, q2) = enqueue(
        d.config,
        ("a@example.com", ["r1@one.test", "r2@one.test"]),
        ("a@example.com", ["r3@two.test"]),
    )
    now = time.time()
    emit(
        d.config,
        Event("delivered", now, q1, "r1@one.test", (("delay", 2.0),)),
        Event("bounced", now, q1, "r2@one.test",
              (("source", "sync"), ("kind", "hard"), ("category", "unknown-recipient"))),
        Event("open", now, q1, "r1@one.test", (("machine", False),)),
        Event("deferred", now, q2, "r3@two.test", (("category", "greylisted"),)),
    )  # fmt: skip
    for query, args in (({}, []), ({"since": "1h", "campaign": "spring"},
                                   ["--since", "1h", "--campaign", "spring"])):  # fmt: skip
        via_api = api.ok("GET", "/api/v1/stats", query=query)
        cli = d.cli("stats", "--json", *args)
        assert cli.returncode == 0, cli.stderr
        via_cli = json.loads(cli.stdout)
        for out in (via_api, via_cli):
            out["filter"].pop("since")
        assert via_api == via_cli
        assert via_api["delivered"] == 1 and via_api["bounced_hard"] == 1
        assert via_api["unique_human_opens"] == 1 and via_api["accepted"] == 3
    assert api.ok("GET", "/api/v1/stats", query={"campaign": "autumn"})["messages"] == 0


def test_dkim_keys_and_dns_records_match_the_cli(running: tuple[Daemon, AdminClient]) -> None:
    d, api = running
    keys = api.ok("GET", "/api/v1/dkim/keys")["keys"]
    assert len(keys) == 1
    key = keys[0]
    assert (key["domain"], key["selector"], key["algorithm"], key["active"]) == (
        "example.com", "s1", "ed25519", True,
    )  # fmt: skip
    assert key["record"]["name"] == "s1._domainkey.example.com"
    assert key["record"]["text"].startswith("v=DKIM1; k=ed25519; p=")
    shown = d.cli("dkim", "show")
    assert shown.returncode == 0, shown.stderr
    assert key["record"]["value"] in shown.stdout
    records = api.ok("GET", "/api/v1/dns/records")
    zone = d.cli("dns", "records")
    assert zone.returncode == 0, zone.stderr
    lines = [rec["zone"] for s in records["sections"] for rec in s["records"]]
    assert lines and all(line in zone.stdout for line in lines)
    kinds = {rec["kind"] for s in records["sections"] for rec in s["records"]}
    assert {"dkim", "spf", "dmarc", "address"} <= kinds
    one = api.ok("GET", "/api/v1/dns/records", query={"domain": "example.com"})
    assert one["sections"][0]["title"] == "example.com"


# -- suppressions ----------------------------------------------------------------------------------
def test_suppressions_add_check_list_remove(running: tuple[Daemon, AdminClient]) -> None:
    d, api = running
    g = api.ok("POST", "/api/v1/suppressions", 201,
               body={"address": "Gone@Dead.test", "reason": "unknown-recipient"})  # fmt: skip
    assert (g["address"], g["scope"], g["reason"], g["source"], g["expires_at"]) == (
        "gone@dead.test", None, "unknown-recipient", "manual", None)  # fmt: skip
    s = api.ok("POST", "/api/v1/suppressions", 201,
               body={"address": "fan@x.test", "reason": "unsubscribe", "scope": "news.test",
                     "for": "30d"})  # fmt: skip
    assert s["scope"] == "news.test" and s["expires_at"] > time.time() + 29 * 86400

    def check(address: str, sender_domain: str | None = None) -> dict[str, object]:
        query = {"address": address}
        if sender_domain:
            query["sender_domain"] = sender_domain
        return api.ok("GET", "/api/v1/suppressions/check", query=query)  # type: ignore[no-any-return]

    assert check("gone@dead.test", "any.test")["suppressed"] is True
    assert check("GONE@dead.test")["entry"]["reason"] == "unknown-recipient"  # type: ignore[index]
    assert check("fan@x.test", "news.test")["suppressed"] is True
    assert check("fan@x.test", "shop.test") == {"address": "fan@x.test", "suppressed": False,
                                               "entry": None}  # fmt: skip
    # The CLI reads the same list.
    assert (
        d.cli("suppression", "check", "fan@x.test", "--sender-domain", "news.test").returncode == 1
    )
    assert (
        d.cli("suppression", "check", "fan@x.test", "--sender-domain", "shop.test").returncode == 0
    )

    listed = api.ok("GET", "/api/v1/suppressions")["suppressions"]
    assert {x["address"] for x in listed} == {"gone@dead.test", "fan@x.test"}
    only = api.ok("GET", "/api/v1/suppressions", query={"address": "fan@x.test", "limit": 5})
    assert [x["scope"] for x in only["suppressions"]] == ["news.test"]

    # The submission listener refuses a suppressed recipient: one list, everywhere.
    host, port = d.config.address("submission", "listen_plain")
    with smtplib.SMTP(host, port, timeout=10) as smtp:
        smtp.ehlo()
        smtp.mail("app@example.com")
        code, reply = smtp.rcpt("gone@dead.test")
        assert code == 550 and b"suppressed" in reply

    wrong_scope = api.delete("/api/v1/suppressions/fan@x.test", query={"scope": "shop.test"})
    assert wrong_scope.status == 404
    assert api.ok("DELETE", "/api/v1/suppressions/fan@x.test", query={"scope": "news.test"}) == {
        "address": "fan@x.test", "removed": 1}  # fmt: skip
    assert api.ok("DELETE", "/api/v1/suppressions/Gone@dead.test")["removed"] == 1
    assert api.delete("/api/v1/suppressions/gone@dead.test").status == 404
    assert check("gone@dead.test")["suppressed"] is False
    assert api.ok("GET", "/api/v1/suppressions") == {"suppressions": []}

    api.validate = False  # invalid on purpose
    for method, path, kw in (
        ("POST", "/api/v1/suppressions", {"body": {"address": "not an address"}}),
        ("POST", "/api/v1/suppressions", {"body": {"address": "a@b.test", "for": "forever"}}),
        ("POST", "/api/v1/suppressions", {"body": ["a@b.test"]}),
        ("GET", "/api/v1/suppressions/check", {"query": {"address": "nobody"}}),
        ("GET", "/api/v1/suppressions", {"query": {"include_expired": "maybe"}}),
        ("DELETE", "/api/v1/suppressions/nobody", {}),
    ):
        r = api.request(method, path, **kw)
        assert r.status == 400 and set(r.json()) == {"error"}, (method, path, kw, r.text)
    api.validate = True


# -- privacy -----------------------------------------------------------------------------------------
@pytest.mark.pg_pending("privacy")
def test_privacy_export_and_erase(running: tuple[Daemon, AdminClient]) -> None:
    d, api = running
    (qid,) = enqueue(d.config, ("a@example.com", ["Victim@One.test", "other@one.test"]))
    emit(d.config, Event("open", time.time(), qid, "victim@one.test"))
    api.ok("POST", "/api/v1/suppressions", 201,
           body={"address": "victim@one.test", "reason": "complaint", "scope": "example.com"})  # fmt: skip
    export = api.ok("GET", "/api/v1/privacy/export", query={"address": "victim@one.test"})
    assert export["address"] == "victim@one.test"
    assert [r["queue_id"] for r in export["received"]] == [qid]
    assert "hello" in export["received"][0]["body"]
    assert {e["type"] for e in export["events"]} >= {"open"}
    assert [x["reason"] for x in export["suppressions"]] == ["complaint"]
    no_bodies = api.ok("GET", "/api/v1/privacy/export",
                       query={"address": "victim@one.test", "bodies": "false"})  # fmt: skip
    assert no_bodies["received"][0]["body"] is None
    cli = d.cli("privacy", "export", "victim@one.test")
    assert cli.returncode == 0, cli.stderr
    from_cli = json.loads(cli.stdout)
    for out in (export, from_cli):
        out.pop("generated_at")
    assert from_cli == export  # one implementation

    erased = api.ok("POST", "/api/v1/privacy/erase", body={"address": "victim@one.test"})
    assert erased["recipients"] == 1 and erased["suppressions_hashed"] == 1
    assert erased["address_token"].endswith("@erased.invalid")
    after = api.ok("GET", "/api/v1/privacy/export", query={"address": "victim@one.test"})
    assert after["received"] == [] and after["events"] == []
    # Kept as a hash: mail from that sending domain to the address is still suppressed.
    verdict = api.ok("GET", "/api/v1/suppressions/check",
                     query={"address": "victim@one.test", "sender_domain": "example.com"})  # fmt: skip
    assert verdict["suppressed"] is True
    again = api.ok("POST", "/api/v1/privacy/erase",
                   body={"address": "victim@one.test", "suppress": True})  # fmt: skip
    assert again["recipients"] == 0
    api.validate = False  # invalid on purpose
    assert api.post("/api/v1/privacy/erase", body={"address": "nobody"}).status == 400
    assert (
        api.post("/api/v1/privacy/erase", body={"address": "a@b.test", "suppress": "yes"}).status
        == 400
    )
    assert (
        api.get("/api/v1/privacy/export", query={"address": "a@b.test", "bodies": "1"}).status
        == 400
    )
    api.validate = True


# -- users -----------------------------------------------------------------------------------------
def test_users_add_list_remove_and_the_user_can_submit(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, tls=True)
    with Daemon(cfg) as d:
        api = AdminClient(base_url(cfg), create_token(d, "tests"))
        password = "tr0ub4dor&3-long"
        created = api.request("POST", "/api/v1/users", body={
            "name": "Bob@Example.com", "password": password, "domains": ["example.com"]})  # fmt: skip
        assert created.status == 201, created.text
        assert created.json()["name"] == "bob@example.com"
        listed = api.get("/api/v1/users")
        assert [u["name"] for u in listed.json()["users"]] == ["bob@example.com"]
        for body in (created.body, listed.body):
            assert password.encode() not in body and b"scrypt" not in body
            assert b"hash" not in body
        cli = d.cli("user", "list")
        assert "bob@example.com" in cli.stdout and "example.com" in cli.stdout

        ctx = ssl.create_default_context()
        cfg.ca.configure_trust(ctx)
        host, port = cfg.address("submission", "listen_tls")
        with smtplib.SMTP_SSL(host, port, context=ctx, timeout=10) as smtp:
            smtp.login("bob@example.com", password)
            smtp.sendmail(
                "bob@example.com",
                ["rcpt@one.test"],
                b"From: bob@example.com\r\nTo: rcpt@one.test\r\nSubject: hi\r\n\r\nhello\r\n",
            )
        with smtplib.SMTP_SSL(host, port, context=ctx, timeout=10) as smtp:
            try:
                smtp.login("bob@example.com", "wrong password")
                raise AssertionError("a wrong password was accepted")
            except smtplib.SMTPAuthenticationError:
                pass

        for body, message in (
            ({"name": "bob@example.com", "password": password, "domains": ["example.com"]},
             "already exists"),
            ({"name": "carol", "password": "short", "domains": ["example.com"]}, "password"),
            ({"name": "carol", "password": password, "domains": []}, "domains"),
            ({"name": "carol", "password": password, "domains": ["not a domain"]}, "domain"),
            ({"name": "", "password": password, "domains": ["example.com"]}, "name"),
        ):  # fmt: skip
            api.validate = False  # these requests break the document on purpose
            r = api.request("POST", "/api/v1/users", body=body)
            api.validate = True
            assert r.status == 400 and message in r.json()["error"], (body, r.text)
        bad_json = api.request(
            "POST", "/api/v1/users", headers={"Content-Type": "application/json"}
        )
        assert bad_json.status == 400

        assert api.ok("DELETE", "/api/v1/users/bob@example.com") == {
            "name": "bob@example.com", "removed": True}  # fmt: skip
        gone = api.delete("/api/v1/users/bob@example.com")
        assert gone.status == 404 and gone.json() == {"error": "no user bob@example.com"}
        assert api.ok("GET", "/api/v1/users") == {"users": []}
        with smtplib.SMTP_SSL(host, port, context=ctx, timeout=10) as smtp:
            try:
                smtp.login("bob@example.com", password)
                raise AssertionError("a removed user logged in")
            except smtplib.SMTPAuthenticationError:
                pass
        metrics = api.get("/metrics").text
        # smtplib's login() tries AUTH PLAIN, then AUTH LOGIN: two failures per refused login.
        assert 'mtaserver_smtp_auth_failures_total{listener="submissions"} 4.0' in metrics, (
            "\n".join(line for line in metrics.splitlines() if "smtp" in line)
        )
        assert 'mtaserver_smtp_sessions_total{listener="submissions"} 3.0' in metrics


# -- coverage -------------------------------------------------------------------------------------
def test_every_documented_endpoint_answers_and_validates(
    running: tuple[Daemon, AdminClient],
) -> None:
    """One pass over every operation of openapi.json (each response schema-validated)."""
    d, api = running
    (qid,) = enqueue(d.config, ("a@example.com", ["r@one.test"]))
    assert api.get("/metrics").status == 200
    spec = api.ok("GET", "/api/v1/openapi.json")
    assert set(spec["paths"]) == {p for _, p in operations()}
    api.ok("GET", "/api/v1/queue/summary")
    api.ok("GET", "/api/v1/queue")
    api.ok("POST", "/api/v1/queue/retry")
    api.ok("GET", f"/api/v1/queue/{qid}")
    api.ok("POST", f"/api/v1/queue/{qid}/hold")
    api.ok("POST", f"/api/v1/queue/{qid}/release")
    api.ok("POST", f"/api/v1/queue/{qid}/retry")
    api.ok("DELETE", f"/api/v1/queue/{qid}")
    api.ok("GET", "/api/v1/events")
    api.ok("GET", "/api/v1/stats")
    for kind in ("campaigns", "triggers"):  # the 200s: tests/test_outreach_stats.py
        api.ok("GET", f"/api/v1/{kind}/none/stats", 404, query={"user": "a@example.com"})
    api.ok("GET", "/api/v1/dkim/keys")
    api.ok("GET", "/api/v1/dns/records")
    assert api.ok("GET", "/api/v1/cluster") == {
        "enabled": False, "node_id": None, "shared_shaping": False, "nodes": []
    }  # fmt: skip
    api.ok("POST", "/api/v1/suppressions", 201, body={"address": "x@y.test"})
    api.ok("GET", "/api/v1/suppressions")
    api.ok("GET", "/api/v1/suppressions/check", query={"address": "x@y.test"})
    api.ok("DELETE", "/api/v1/suppressions/x@y.test")
    api.ok("GET", "/api/v1/privacy/export", query={"address": "x@y.test"})
    api.ok("POST", "/api/v1/privacy/erase", body={"address": "x@y.test"})
    api.ok("POST", "/api/v1/users", 201,
           body={"name": "bob@example.com", "password": "correct horse", "domains": ["example.com"]})  # fmt: skip
    api.ok("GET", "/api/v1/users")
    api.ok("DELETE", "/api/v1/users/bob@example.com")
    tid = api.ok("POST", "/api/v1/templates", 201, body={"name": "t", "text": "Hi {{n}}"})["id"]
    api.ok("GET", "/api/v1/templates")
    api.ok("POST", f"/api/v1/templates/{tid}/versions", 201, body={"html": "<b>{{n}}</b>"})
    api.ok("POST", f"/api/v1/templates/{tid}/versions/1/activate")
    api.ok("GET", f"/api/v1/templates/{tid}")
    api.ok("DELETE", f"/api/v1/templates/{tid}")
    missing = operations() - api.covered
    assert not missing, f"not exercised: {sorted(missing)}"
