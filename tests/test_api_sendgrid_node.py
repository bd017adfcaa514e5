"""SendGrid's Node client (``@sendgrid/mail``, pinned in tests/node/package-lock.json)
against a running daemon's HTTP send API, via ``client.setDefaultRequest('baseUrl', …)``."""

from __future__ import annotations

import asyncio
import email
import json
import shutil
import subprocess
import time
from pathlib import Path

from tests.support.apiserver import ApiDaemon

NODE_DIR = Path(__file__).with_name("node")
NODE = shutil.which("node")


def _text(data: bytes) -> str:
    for part in email.message_from_bytes(data).walk():
        if part.get_content_type() == "text/plain":
            payload = part.get_payload(decode=True)
            assert isinstance(payload, bytes)
            return payload.decode()
    raise AssertionError("no text part")


async def test_node_client_sends_through_the_api(tmp_path: Path) -> None:
    assert NODE is not None, "needs node (.ci/run installs nodejs)"
    assert (NODE_DIR / "node_modules" / "@sendgrid" / "mail").exists(), (
        "run `npm ci` in tests/node (.ci/run does)"
    )
    async with ApiDaemon(tmp_path) as api:
        proc = await asyncio.to_thread(
            subprocess.run, [NODE, str(NODE_DIR / "send.js"), api.base_url, api.key],
            capture_output=True, text=True, timeout=60, cwd=NODE_DIR,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout)
        for name in ("plain", "personalized", "attachments", "scheduled", "control"):
            assert out[name]["status"] == 202 and out[name]["id"], (name, out[name])
        assert out["cancel"] == 201
        assert out["noFrom"]["status"] == 400
        assert "from.email" in [e["field"] for e in out["noFrom"]["body"]["errors"]]
        assert out["notMine"]["status"] == 403
        assert out["notMine"]["body"]["errors"][0]["field"] == "from"

        await api.wait_messages(6)  # plain, three personalized, attachments, control
        by = {m.rcpt_tos[0]: m for m in api.sink.messages}
        assert all(api.dkim_ok(m.data) for m in api.sink.messages)
        plain = email.message_from_bytes(by["node-plain@dest.test"].data)
        assert plain["Subject"] == "Node plain" and plain["From"] == "Node App <app@example.com>"
        assert _text(by["node-plain@dest.test"].data).strip() == "Hello from Node."
        for i, n in enumerate(["ann", "bob", "cyd"]):
            data = by[f"node-{n}@dest.test"].data
            assert email.message_from_bytes(data)["Subject"] == f"Node hi {n.upper()}"
            assert _text(data).strip() == f"Dear {n.upper()}, your code is N{i}."
        files = {
            p.get_filename(): p.get_payload(decode=True)
            for p in email.message_from_bytes(by["node-att@dest.test"].data).walk()
            if p.get_filename()
        }
        assert files == {"notes.txt": b"node attachment bytes",
                         "pic.png": bytes([0x89, 0x50, 0x4E, 0x47, 1, 2, 3])}  # fmt: skip
        assert time.time() >= out["sendAt"] - 0.5 and "node-control@dest.test" in by
        await asyncio.sleep(1.0)
        assert "node-cancelled@dest.test" not in {m.rcpt_tos[0] for m in api.sink.messages}
        assert api.query(
            "SELECT state FROM recipients WHERE address='node-cancelled@dest.test'"
        ) == [("suppressed",)]
