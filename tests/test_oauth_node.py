"""nodemailer's OAuth2 (``auth: {type: 'OAuth2', user, accessToken}``, pinned in
tests/node/package-lock.json) submitting over STARTTLS with AUTH XOAUTH2."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support.oidc_issuer import Issuer
from tests.test_oauth_smtp import server

NODE_DIR = Path(__file__).with_name("node")
NODE = shutil.which("node")


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    iss = await Issuer().start()
    try:
        yield iss
    finally:
        await iss.stop()


async def test_nodemailer_oauth2(tmp_path: Path, issuer: Issuer) -> None:
    assert NODE is not None, "needs node (.ci/run installs nodejs)"
    assert (NODE_DIR / "node_modules" / "nodemailer").exists(), (
        "run `npm ci` in tests/node (.ci/run does)"
    )
    async with server(tmp_path, issuer) as env:
        ca = tmp_path / "ca.pem"
        env.ca.cert_pem.write_to_path(str(ca))
        jobs = [
            {"user": "alice", "token": issuer.token("alice"), "from": "alice@example.com"},
            {"user": "bob", "token": issuer.token("bob", alg="ES256"), "from": "bob@bob.example"},
            # alice's token, bob's domain: sender binding
            {"user": "alice", "token": issuer.token("alice"), "from": "bob@bob.example"},
            {
                "user": "alice",
                "token": issuer.token("alice", lifetime=-3600),
                "from": "alice@example.com",
            },
            {
                "user": "alice",
                "token": issuer.token("alice", aud="other"),
                "from": "alice@example.com",
            },
        ]
        proc = await asyncio.to_thread(
            subprocess.run, [NODE, str(NODE_DIR / "oauth_smtp.js"), str(env.port("submission")),
                             str(ca)],
            input=json.dumps(jobs), capture_output=True, text=True, timeout=60, cwd=NODE_DIR,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        ok_a, ok_b, binding, expired, wrong_aud = json.loads(proc.stdout)
        assert ok_a["ok"] and ok_a["response"].startswith("250 2.0.0 Ok: queued as"), ok_a
        assert ok_b["ok"], ok_b
        assert not binding["ok"] and binding["responseCode"] == 553, binding
        for failed in (expired, wrong_aud):
            assert not failed["ok"] and failed["code"] == "EAUTH", failed
            assert failed["responseCode"] == 535 and "5.7.8" in failed["response"], failed
        rows = env.messages()
        assert sorted((r["user"], r["sender"]) for r in rows) == [
            ("alice", "alice@example.com"), ("bob", "bob@bob.example"),
        ]  # fmt: skip
