"""The real daemon with ``[oauth]``: STARTTLS + XOAUTH2/OAUTHBEARER, SIGHUP, check-config."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiosmtplib
import pytest

from tests.support.daemon import Daemon, TestConfig
from tests.support.oidc_issuer import Issuer

MSG = b"From: App <app@example.com>\r\nTo: x@dest.example\r\nSubject: hi\r\n\r\nhello\r\n"


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    iss = await Issuer().start()
    try:
        yield iss
    finally:
        await iss.stop()


def oauthbearer(token: str) -> str:
    return base64.b64encode(f"n,,\x01auth=Bearer {token}\x01\x01".encode()).decode()


async def test_daemon_oauth_submission(tmp_path: Path, issuer: Issuer) -> None:
    cfg = TestConfig(tmp_path)
    cfg.set("submission", trusted_networks=["10.99.0.0/16"])
    cfg.set("oauth", issuers=[issuer.issuer_table()])
    ctx = ssl.create_default_context()
    cfg.ca.configure_trust(ctx)
    daemon = Daemon(cfg)
    await asyncio.to_thread(daemon.start)
    token = issuer.token("app")
    try:
        added = await asyncio.to_thread(
            daemon.cli, "user", "add", "app", "--domain", "example.com", "--password-stdin",
            input=b"daemon password 123\n",
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        _, port = cfg.address("submission", "listen")
        client = aiosmtplib.SMTP(hostname="localhost", port=port, tls_context=ctx,
                                 start_tls=True, timeout=15)  # fmt: skip
        async with client:
            await client.ehlo()
            assert "xoauth2" in client.server_auth_methods
            assert "oauthbearer" in client.server_auth_methods
            await client.auth_xoauth2("app", token)
            errors, reply = await client.sendmail("app@example.com", ["x@dest.example"], MSG)
            assert errors == {}
            queue_id = reply.rsplit(" ", 1)[1]
            with pytest.raises(aiosmtplib.SMTPSenderRefused) as refused:
                await client.sendmail("app@other.example", ["x@dest.example"], MSG)
            assert refused.value.code == 553
        _, tls_port = cfg.address("submission", "listen_tls")
        client = aiosmtplib.SMTP(hostname="localhost", port=tls_port, tls_context=ctx,
                                 use_tls=True, timeout=15)  # fmt: skip
        async with client:
            await client.ehlo()
            reply = await client.execute_command(b"AUTH", b"OAUTHBEARER",
                                                 oauthbearer(token).encode())  # fmt: skip
            assert reply.code == 235, reply
        # SIGHUP with another audience: the same token is refused from now on
        cfg.set("oauth", issuers=[issuer.issuer_table(audience="another-audience")]).write()
        await asyncio.to_thread(daemon.reload)
        client = aiosmtplib.SMTP(hostname="localhost", port=port, tls_context=ctx,
                                 start_tls=True, timeout=15)  # fmt: skip
        async with client:
            with pytest.raises(aiosmtplib.SMTPAuthenticationError) as err:
                await client.auth_xoauth2("app", token)
            assert err.value.code == 535
            await client.auth_xoauth2("app", issuer.token("app", aud="another-audience"))
    finally:
        code = await asyncio.to_thread(daemon.stop)
    log = daemon.log()
    assert code == 0, log
    assert "event=auth_ok mech=XOAUTH2 user=app" in log
    assert "event=auth_failed mech=XOAUTH2" in log and "reason=" in log
    assert token not in log and token.split(".")[2] not in log
    users = {r[0] for r in cfg.query('SELECT "user" FROM messages WHERE id=?', queue_id)}
    assert users == {"app"}


def test_check_config_names_the_bad_key(tmp_path: Path) -> None:
    cfg = TestConfig(tmp_path)
    cfg.set("oauth", issuers=[{
        "issuer": "https://kc.example.com/realms/R", "audience": "mtaserver",
        "jwks_uri": "https://kc.example.com/realms/R/protocol/openid-connect/certs",
        "algorithms": ["RS256", "HS256"],
    }])  # fmt: skip
    cfg.write()
    proc = Daemon(cfg).cli("check-config")
    assert proc.returncode == 2, proc
    assert "oauth.issuers[0].algorithms: 'HS256' is a shared-secret" in proc.stderr + proc.stdout


def test_check_config_reads_the_jwks_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text("<html>not keys</html>")
    cfg = TestConfig(tmp_path)
    cfg.set("oauth", issuers=[{
        "issuer": "https://idp.example.com", "audience": ["a", "b"], "jwks_file": str(keys),
        "user_claim": "email",
    }])  # fmt: skip
    cfg.write()
    proc = Daemon(cfg).cli("check-config")
    assert proc.returncode == 2, proc
    assert f"oauth.issuers[0].jwks_file: {keys}: not JSON" in proc.stderr
    assert "Traceback" not in proc.stderr
    keys.write_text(json.dumps(Issuer().jwks()))
    proc = Daemon(cfg).cli("check-config")
    assert proc.returncode == 0, proc.stderr
    assert f"oauth issuer   https://idp.example.com aud=a,b user=email keys={keys}" in proc.stdout


async def test_oauth_in_worker_processes(tmp_path: Path, issuer: Issuer) -> None:
    """With [server] workers = 2 the SMTP sessions run in children: OAuth works there too."""
    cfg = TestConfig(tmp_path)
    cfg.set("server", workers=2)
    cfg.set("oauth", issuers=[issuer.issuer_table()])
    ctx = ssl.create_default_context()
    cfg.ca.configure_trust(ctx)
    daemon = Daemon(cfg)
    await asyncio.to_thread(daemon.start)
    try:
        added = await asyncio.to_thread(
            daemon.cli, "user", "add", "app", "--domain", "example.com", "--password-stdin",
            input=b"daemon password 123\n",
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        _, port = cfg.address("submission", "listen")
        for _ in range(4):  # connections spread over the workers
            client = aiosmtplib.SMTP(hostname="localhost", port=port, tls_context=ctx,
                                     start_tls=True, timeout=15)  # fmt: skip
            async with client:
                await client.ehlo()
                with pytest.raises(aiosmtplib.SMTPAuthenticationError) as err:
                    await client.auth_xoauth2("app", issuer.token("app", lifetime=-3600))
                assert err.value.code == 535
                await client.auth_xoauth2("app", issuer.token("app"))
                errors, _ = await client.sendmail("app@example.com", ["x@dest.example"], MSG)
                assert errors == {}
    finally:
        code = await asyncio.to_thread(daemon.stop)
    assert code == 0, daemon.log()
