"""OAuth 2.0 bearer tokens (signed JWTs from an identity provider) in place of passwords.

``verifier`` checks a token against the configured issuers (keys from ``jwks``);
``bearer`` maps a verified token to an mtaserver user for SMTP AUTH OAUTHBEARER/XOAUTH2.
"""

from mtaserver.oauth.bearer import BearerAuthenticator, BearerVerdict
from mtaserver.oauth.jwks import JwksUnavailable
from mtaserver.oauth.verifier import (
    CurrentVerifier,
    TokenInvalid,
    TokenUnavailable,
    TokenVerifier,
    VerifiedToken,
    looks_like_jwt,
)

__all__ = [
    "BearerAuthenticator",
    "BearerVerdict",
    "CurrentVerifier",
    "JwksUnavailable",
    "TokenInvalid",
    "TokenUnavailable",
    "TokenVerifier",
    "VerifiedToken",
    "looks_like_jwt",
]
