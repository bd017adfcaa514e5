"""The HTTP send and contacts APIs with OAuth access tokens (real daemon, sink MX): the
token's user binds the sender like its API keys, its scopes are SendGrid's scope names."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.apiserver import ApiDaemon
from tests.support.oidc_issuer import Issuer
from tests.test_oauth_verifier import claims_of, forge


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    iss = await Issuer().start()
    try:
        yield iss
    finally:
        await iss.stop()


def mail(sender: str, to: str) -> dict[str, Any]:
    return {
        "personalizations": [{"to": [{"email": to}]}],
        "from": {"email": sender},
        "subject": "oauth",
        "content": [{"type": "text/plain", "value": "sent with an access token"}],
    }


async def test_send_and_contacts_with_access_tokens(tmp_path: Path, issuer: Issuer) -> None:
    api = ApiDaemon(tmp_path)
    api.cfg.set("oauth", issuers=[issuer.issuer_table()])
    async with api, aiohttp.ClientSession() as http:
        key = await api.new_key("mail.send")  # makes the user app (example.com) too

        async def post(path: str, token: str, body: Any) -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {token}"}
            async with http.post(api.base_url + path, json=body, headers=headers) as resp:
                return resp.status, await resp.read()

        async def put(path: str, token: str, body: Any) -> tuple[int, Any]:
            headers = {"Authorization": f"Bearer {token}"}
            async with http.put(api.base_url + path, json=body, headers=headers) as resp:
                return resp.status, await resp.read()

        async def get(path: str, token: str) -> int:
            headers = {"Authorization": f"Bearer {token}"}
            async with http.get(api.base_url + path, headers=headers) as resp:
                return resp.status

        sender = issuer.token("app", scope="openid mail.send contacts.read")
        status, body = await post("/v3/mail/send", sender, mail("app@example.com", "a@x.test"))
        assert status == 202, body
        # the token's user binds the sender as that user's API key does
        for token in (sender, key):
            status, body = await post("/v3/mail/send", token, mail("app@other.test", "b@x.test"))
            assert status == 403, body
        # the contacts API: contacts.read for GET, contacts.write for changes
        assert await get("/v1/lists", sender) == 200
        assert await get("/v1/lists", key) == 403  # that key has mail.send only
        contact = {"contacts": [{"email": "c@x.test"}]}
        assert (await put("/v1/contacts", sender, contact))[0] == 403
        writer = issuer.token("app", scope="contacts.write")
        status, body = await put("/v1/contacts", writer, contact)
        assert status in (200, 202), body
        # scopes: without mail.send 403; with a scope the API does not know, nothing more
        reader = issuer.token("app", scope="contacts.read admin.write")
        status, _ = await post("/v3/mail/send", reader, mail("app@example.com", "c@x.test"))
        assert status == 403
        # bad tokens: 401, like a wrong key
        for bad in (
            issuer.token("app", scope="mail.send", lifetime=-3600),
            issuer.token("app", scope="mail.send", aud="someone-else"),
            issuer.token("nobody", scope="mail.send"),  # no such user: nothing to bind to
            forge(
                {"alg": "HS256", "kid": "rsa1"},
                claims_of(issuer, preferred_username="app", scope="mail.send"),
                issuer.rsa_public_pem(),
            ),
        ):
            status, body = await post("/v3/mail/send", bad, mail("app@example.com", "d@x.test"))
            assert status == 401, (status, body)
        await api.wait_messages(1)
        assert [m.rcpt_tos for m in api.sink.messages] == [["a@x.test"]]


async def test_tokens_that_cannot_be_checked_are_503_never_accepted(
    tmp_path: Path, issuer: Issuer
) -> None:
    issuer.mode = "down"  # the issuer's JWKS endpoint fails: no key to check a token with
    api = ApiDaemon(tmp_path)
    api.cfg.set("oauth", issuers=[issuer.issuer_table()])
    async with api, aiohttp.ClientSession() as http:
        key = await api.new_key("mail.send")
        token = issuer.token("app", scope="mail.send contacts.read")
        calls = [
            ("POST", "/v3/mail/send", mail("app@example.com", "a@x.test")),
            ("GET", "/v1/lists", None),
        ]
        for method, path, body in calls:
            headers = {"Authorization": f"Bearer {token}"}
            async with http.request(method, api.base_url + path, json=body, headers=headers) as r:
                answer = await r.json()
                assert r.status == 503 and r.headers["Retry-After"] == "30", answer
                assert "cannot be checked now" in answer["errors"][0]["message"]
        # API keys do not depend on the issuer
        headers = {"Authorization": f"Bearer {key}"}
        payload = mail("app@example.com", "b@x.test")
        async with http.post(api.base_url + "/v3/mail/send", json=payload, headers=headers) as r:
            assert r.status == 202
        await api.wait_messages(1)
        assert [m.rcpt_tos for m in api.sink.messages] == [["b@x.test"]]
