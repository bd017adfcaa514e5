"""A verified token → an mtaserver user, the way a password names one.

The issuer's ``user_claim`` value, trimmed and lower-cased (user names are
case-insensitive), must be the name of an existing user (``mtaserver user add``): that
user's domains bind the sender exactly as after a password. There is no automatic
provisioning — a token from the provider for someone who is not a user here is refused.
A name the client claims beside the token (XOAUTH2 ``user=``, OAUTHBEARER ``a=``) must be
the same user, so a log line never names one user while another sends.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from mtaserver.oauth.verifier import TokenInvalid, TokenUnavailable, TokenVerifier


class UserLookup(Protocol):
    """What the user store gives (``UserStore.lookup``): the user and its password hash."""

    async def lookup(self, name: str) -> tuple[Any, str] | None: ...


@dataclass(frozen=True, slots=True)
class BearerVerdict:
    """The answer for one token: ``user`` when accepted, else why not (never the token)."""

    user: Any | None
    temporary: bool = False  # keys unavailable: 454, not a failure of the client's
    status: str = "invalid_token"  # RFC 6750 error code for the client
    reason: str = ""  # for the log only
    name: str | None = None  # the user the token (or the client) named, for throttling
    issuer: str | None = None
    scopes: frozenset[str] = frozenset()


class BearerAuthenticator:
    def __init__(self, verifier: TokenVerifier, users: UserLookup) -> None:
        self.verifier = verifier
        self._users = users
        issuers = verifier.config.issuers
        # RFC 7628 lets the error name the discovery document; only unambiguous with one.
        self.discovery_url = (
            issuers[0].issuer.rstrip("/") + "/.well-known/openid-configuration"
            if len(issuers) == 1
            else None
        )

    @property
    def max_token_size(self) -> int:
        return self.verifier.max_token_size

    async def authenticate(self, token: str, claimed: str | None) -> BearerVerdict:
        claimed_name = claimed.strip().lower() if claimed else None
        try:
            verified = await self.verifier.verify(token)
        except TokenUnavailable as exc:
            return BearerVerdict(None, temporary=True, reason=str(exc), name=claimed_name)
        except TokenInvalid as exc:
            return BearerVerdict(None, status=exc.status, reason=exc.reason, name=claimed_name)
        name = verified.user.lower()
        if claimed_name and claimed_name != name:
            return BearerVerdict(None, reason="client named another user than the token",
                                 name=claimed_name, issuer=verified.issuer)  # fmt: skip
        found = await self._users.lookup(name) if len(name) <= 128 else None
        if found is None:
            return BearerVerdict(None, reason="no such user", name=name, issuer=verified.issuer)
        return BearerVerdict(found[0], name=name, issuer=verified.issuer, scopes=verified.scopes)

    async def aclose(self) -> None:
        await self.verifier.aclose()
