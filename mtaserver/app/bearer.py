"""API keys or OAuth access tokens for the HTTP send and contacts APIs.

A bearer that is a JWT is checked against the ``[oauth]`` issuers; its user claim names the
mtaserver user (whose domains bind the sender, as for that user's API keys) and its scopes
are SendGrid's scope names (``mail.send``, ``contacts.write``, …), kept only when the API
knows them. Anything else is an API key, as before. A token that cannot be checked now
(issuer keys unavailable) raises ``KeysUnavailable``: the API answers 503 with
Retry-After, as the admin API does, and never accepts what it could not verify.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtaserver.api.deps import KeyInfo, Keys, KeysUnavailable
from mtaserver.log import get_logger, kv
from mtaserver.oauth import CurrentVerifier, TokenInvalid, TokenUnavailable, looks_like_jwt
from mtaserver.storage.sqlite.apikeys import SCOPES

log = get_logger("api")
_KNOWN = frozenset(SCOPES)


@dataclass(frozen=True, slots=True)
class TokenKey:
    """An access token in the shape of an API key (``key_id`` names it in logs/events)."""

    key_id: str
    user: str
    scopes: frozenset[str]


class KeysOrTokens:
    def __init__(self, keys: Keys, oauth: CurrentVerifier) -> None:
        self._keys = keys
        self._oauth = oauth

    async def verify(self, key: str) -> KeyInfo | None:
        if not looks_like_jwt(key):
            return await self._keys.verify(key)
        try:
            token = await self._oauth.verify(key)
        except TokenUnavailable as exc:
            log.warning(kv(event="api_token_unverifiable", reason=str(exc)))
            raise KeysUnavailable(str(exc)) from None
        except TokenInvalid as exc:
            log.info(kv(event="api_token_refused", reason=exc.reason))
            return None
        user = token.user.lower()
        return TokenKey(key_id=f"oauth:{user}"[:200], user=user, scopes=token.scopes & _KNOWN)
