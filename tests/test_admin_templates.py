"""Stored templates through the admin API of a running daemon (real HTTP, every exchange
validated against openapi.json): create, add versions, activate an older one, delete; a
syntax error is a 400 naming the part and line and stores nothing; no token, no access;
and the daemon's send API renders the active version by template id."""

from __future__ import annotations

import email
import json
import re
import urllib.request
from pathlib import Path

from tests.support.admin import AdminClient
from tests.support.daemon import Daemon, free_port
from tests.test_admin_api import base_url, make_config, stored_token


def test_templates_over_the_admin_api(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    token = stored_token(cfg, "tests")
    with Daemon(cfg) as d:
        api = AdminClient(base_url(cfg), token)
        assert api.ok("GET", "/api/v1/templates") == {"templates": []}
        assert api.get("/api/v1/templates", token=None).status == 401
        r = api.post("/api/v1/templates", token=None, body={"name": "x", "text": "y"})
        assert r.status == 401

        made = api.ok("POST", "/api/v1/templates", 201,
                      body={"name": "welcome", "subject": "Hi {{name}}", "text": "v1 {{name}}"})  # fmt: skip
        tid = made["id"]
        assert re.fullmatch(r"d-[0-9a-f]{32}", tid) and made["active_version"] == 1
        assert [v["text"] for v in made["versions"]] == ["v1 {{name}}"]
        r = api.post("/api/v1/templates", body={"name": "welcome", "text": "again"})
        assert r.status == 400 and "exists" in r.json()["error"]

        bad = {"html": "<p>\n{{#if vip}}\nunclosed</p>"}
        r = api.post(f"/api/v1/templates/{tid}/versions", body=bad)
        assert r.status == 400, r.text
        assert r.json()["error"] == "template html: '{{#if}}' opened on line 2 is never closed"
        r = api.post("/api/v1/templates", body={"name": "empty", "subject": "s"})
        assert r.status == 400 and "html or text" in r.json()["error"]

        v2 = api.ok("POST", f"/api/v1/templates/{tid}/versions", 201,
                    body={"subject": "Hello {{name}}", "html": "<b>v2 {{name}}</b>"})  # fmt: skip
        assert v2["active_version"] == 2 and [v["active"] for v in v2["versions"]] == [False, True]
        shown = api.ok("GET", "/api/v1/templates/welcome")
        assert shown == v2
        listed = api.ok("GET", "/api/v1/templates")["templates"]
        assert [(t["id"], t["versions"], t["active_version"]) for t in listed] == [(tid, 2, 2)]

        back = api.ok("POST", "/api/v1/templates/welcome/versions/1/activate")
        assert back["active_version"] == 1
        r = api.post(f"/api/v1/templates/{tid}/versions/9/activate")
        assert r.status == 404
        assert api.get("/api/v1/templates/nope").status == 404
        assert api.post("/api/v1/templates/nope/versions", body={"text": "x"}).status == 404

        # the CLI sees the same store
        out = d.cli("template", "show", tid)
        assert out.returncode == 0 and "version 1 (active)" in out.stdout

        gone = api.ok("DELETE", f"/api/v1/templates/{tid}")
        assert gone == {"id": tid, "name": "welcome", "deleted": True}
        assert api.delete(f"/api/v1/templates/{tid}").status == 404
    assert cfg.query("SELECT COUNT(*) FROM template_versions") == [(0,)]


def test_send_api_renders_the_active_stored_version(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    cfg.set("api", listen=f"127.0.0.1:{free_port()}")
    token = stored_token(cfg, "tests")
    with Daemon(cfg) as d:
        assert d.cli("user", "add", "app", "--domain", "example.com", "--password-stdin",
                     input=b"correct horse battery\n").returncode == 0  # fmt: skip
        key = d.cli("apikey", "create", "--user", "app").stdout.strip()
        api = AdminClient(base_url(cfg), token)
        tid = api.ok("POST", "/api/v1/templates", 201,
                     body={"name": "w", "subject": "S {{n}}", "text": "T {{n}}"})["id"]  # fmt: skip
        api.ok("POST", f"/api/v1/templates/{tid}/versions", 201,
               body={"subject": "S2 {{n}}", "text": "T2 {{n}}"})  # fmt: skip
        host, port = cfg.address("api", "listen")
        body = {"personalizations": [{"to": [{"email": "r@one.test"}],
                                      "dynamic_template_data": {"n": "Ann"}}],
                "from": {"email": "app@example.com"}, "template_id": tid}  # fmt: skip
        req = urllib.request.Request(
            f"http://{host}:{port}/v3/mail/send", data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=15) as r:
            assert r.status == 202
    [(raw,)] = cfg.query("SELECT body FROM messages")
    msg = email.message_from_bytes(raw)
    assert msg["Subject"] == "S2 Ann"
    assert "T2 Ann" in msg.get_payload(decode=True).decode()
