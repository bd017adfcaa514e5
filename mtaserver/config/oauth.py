"""``[oauth]``: identity providers whose signed access tokens (JWTs) stand in for passwords.

Each ``[[oauth.issuers]]`` names one provider: the ``iss`` it signs as, the ``aud`` its
tokens must carry for us, where its public keys are (``jwks_uri``, fetched and cached, or a
static ``jwks_file``), the signature algorithms accepted, and which claims name the user
and carry the scopes. Only asymmetric algorithms are accepted: ``none`` would let anyone
mint tokens, and an HS* algorithm with a published key is the classic key-confusion attack
(the public key used as the HMAC secret), so both are refused here with the key named.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from mtaserver.config.reader import Reader

# Asymmetric JWS algorithms (RFC 7518, RFC 8037) the verifier knows.
KNOWN_ALGORITHMS = (
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA",
)  # fmt: skip
DEFAULT_ALGORITHMS = ("RS256", "ES256", "EdDSA")
KiB = 1024


@dataclass(frozen=True, slots=True)
class IssuerConfig:
    issuer: str  # the exact ``iss`` value
    audience: tuple[str, ...]  # a token's ``aud`` must contain one of these
    jwks_uri: str | None = None
    jwks_file: Path | None = None
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    clock_skew: float = 60.0  # leeway on exp / nbf / iat
    user_claim: str = "sub"  # the claim whose value is the mtaserver user name
    scope_claim: str = "scope"  # space-separated string or list of strings
    max_token_size: int = 16 * KiB  # refused before any parsing beyond this
    jwks_timeout: float = 5.0  # one JWKS fetch, connect to last byte
    jwks_refresh_interval: float = 30.0  # at most one fetch per this, unknown kid or error
    jwks_max_age: float = 86400.0  # upper bound on a Cache-Control max-age we honour


@dataclass(frozen=True, slots=True)
class OAuthConfig:
    issuers: tuple[IssuerConfig, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.issuers)

    @property
    def max_token_size(self) -> int:
        return max((i.max_token_size for i in self.issuers), default=0)


def parse(r: Reader) -> OAuthConfig:
    issuers: list[IssuerConfig] = []
    for table in r.tables("issuers"):
        item = _issuer(table)
        if any(item.issuer == other.issuer for other in issuers):
            raise table.error("issuer", f"{item.issuer!r} is configured twice")
        issuers.append(item)
    r.finish()
    return OAuthConfig(tuple(issuers))


def _issuer(r: Reader) -> IssuerConfig:
    issuer = r.string("issuer")
    if not issuer.strip() or issuer != issuer.strip():
        raise r.error("issuer", f"expected the provider's exact issuer URL, got {issuer!r}")
    audience = _audience(r)
    jwks_uri = r.string("jwks_uri", None)
    jwks_file = r.path("jwks_file", None, must_exist=True, readable=True)
    if (jwks_uri is None) == (jwks_file is None):
        raise r.error("jwks_uri", "set exactly one of jwks_uri (fetched over HTTPS) or jwks_file")
    if jwks_uri is not None:
        _check_uri(r, jwks_uri)
    cfg = IssuerConfig(
        issuer=issuer,
        audience=audience,
        jwks_uri=jwks_uri,
        jwks_file=jwks_file,
        algorithms=_algorithms(r),
        clock_skew=r.duration("clock_skew", 60.0),
        user_claim=_claim(r, "user_claim", "sub"),
        scope_claim=_claim(r, "scope_claim", "scope"),
        max_token_size=r.size("max_token_size", 16 * KiB),
        jwks_timeout=r.duration("jwks_timeout", 5.0),
        jwks_refresh_interval=r.duration("jwks_refresh_interval", 30.0),
        jwks_max_age=r.duration("jwks_max_age", 86400.0),
    )
    r.finish()
    if not 0 <= cfg.clock_skew <= 600:
        raise r.error("clock_skew", f"must be between 0s and 10m, got {cfg.clock_skew:g}s")
    if not 256 <= cfg.max_token_size <= 64 * KiB:
        raise r.error(
            "max_token_size", f"must be between 256B and 64KiB, got {cfg.max_token_size} bytes"
        )
    if not 0 < cfg.jwks_timeout <= 60:
        raise r.error("jwks_timeout", f"must be between 0s and 1m, got {cfg.jwks_timeout:g}s")
    if cfg.jwks_refresh_interval < 1:
        raise r.error("jwks_refresh_interval", "must be at least 1s (it bounds JWKS fetches)")
    return cfg


def _audience(r: Reader) -> tuple[str, ...]:
    if isinstance(r._table.get("audience"), list):
        values: tuple[str, ...] = r.str_list("audience")
    else:
        values = (r.string("audience"),)
    if not values or not all(v.strip() for v in values):
        raise r.error("audience", "expected the audience (aud) this server's tokens carry")
    return values


def _algorithms(r: Reader) -> tuple[str, ...]:
    algs: tuple[str, ...] = r.str_list("algorithms", DEFAULT_ALGORITHMS)
    if not algs:
        raise r.error("algorithms", "must name at least one algorithm")
    for alg in algs:
        if alg.lower() == "none":
            raise r.error("algorithms", "'none' accepts unsigned tokens; remove it")
        if alg.upper().startswith("HS"):
            raise r.error(
                "algorithms",
                f"{alg!r} is a shared-secret (HMAC) algorithm; with a published key anyone "
                "could sign tokens; use RS256, ES256 or EdDSA",
            )
        if alg not in KNOWN_ALGORITHMS:
            raise r.error(
                "algorithms",
                f"unknown algorithm {alg!r}; expected some of {', '.join(KNOWN_ALGORITHMS)}",
            )
    return algs


def _claim(r: Reader, key: str, default: str) -> str:
    value: str = r.string(key, default)
    if not value or not value.replace("_", "").replace("-", "").replace(".", "").isalnum():
        raise r.error(key, f"expected a claim name like 'sub' or 'email', got {value!r}")
    return value


def _check_uri(r: Reader, uri: str) -> None:
    parts = urlsplit(uri)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise r.error("jwks_uri", f"expected an https:// URL, got {uri!r}")
    if parts.scheme == "http" and not _loopback(parts.hostname):
        raise r.error(
            "jwks_uri",
            f"{uri!r} is plain HTTP: anyone on the path could substitute keys; use https://",
        )


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
