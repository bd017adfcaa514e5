"""``[oauth]``: defaults, and every refusal names the key to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtaserver.config import ConfigError, parse_config
from mtaserver.config.oauth import DEFAULT_ALGORITHMS

GOOD = """
[[oauth.issuers]]
issuer = "https://kc.example.com/realms/R"
audience = "mtaserver"
jwks_uri = "https://kc.example.com/realms/R/protocol/openid-connect/certs"
"""


def load(text: str, tmp_path: Path):  # type: ignore[no-untyped-def]
    return parse_config(text, tmp_path / "config.toml")


def error_of(text: str, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as exc:
        load(text, tmp_path)
    return str(exc.value)


def test_defaults(tmp_path: Path) -> None:
    assert not load("", tmp_path).oauth.enabled
    (i,) = load(GOOD, tmp_path).oauth.issuers
    assert i.issuer == "https://kc.example.com/realms/R" and i.audience == ("mtaserver",)
    assert i.algorithms == DEFAULT_ALGORITHMS == ("RS256", "ES256", "EdDSA")
    assert (i.clock_skew, i.user_claim, i.scope_claim) == (60.0, "sub", "scope")
    assert i.max_token_size == 16384 and i.jwks_file is None
    assert (i.jwks_timeout, i.jwks_refresh_interval) == (5.0, 30.0)


def test_all_keys(tmp_path: Path) -> None:
    (tmp_path / "keys.json").write_text('{"keys": []}')
    cfg = load(
        """
[[oauth.issuers]]
issuer = "https://login.example.org"
audience = ["api://mta", "mtaserver"]
jwks_file = "keys.json"
algorithms = ["ES256"]
clock_skew = "2m"
user_claim = "email"
scope_claim = "scp"
max_token_size = "8KiB"
jwks_timeout = "2s"
jwks_refresh_interval = "1m"
jwks_max_age = "1h"

[[oauth.issuers]]
issuer = "http://127.0.0.1:8080/realms/dev"
audience = "mtaserver"
jwks_uri = "http://127.0.0.1:8080/realms/dev/protocol/openid-connect/certs"
""",
        tmp_path,
    ).oauth
    a, b = cfg.issuers
    assert a.audience == ("api://mta", "mtaserver") and a.jwks_file == tmp_path / "keys.json"
    assert (a.algorithms, a.clock_skew, a.user_claim, a.scope_claim) == (
        ("ES256",), 120.0, "email", "scp",
    )  # fmt: skip
    assert (a.max_token_size, a.jwks_timeout, a.jwks_refresh_interval, a.jwks_max_age) == (
        8192, 2.0, 60.0, 3600.0,
    )  # fmt: skip
    assert b.jwks_uri is not None and cfg.max_token_size == 16384


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ('algorithms = ["RS256", "none"]',
         "config.toml: oauth.issuers[0].algorithms: 'none' accepts unsigned tokens"),
        ('algorithms = ["HS256"]',
         "config.toml: oauth.issuers[0].algorithms: 'HS256' is a shared-secret (HMAC)"),
        ('algorithms = ["hs512"]', "oauth.issuers[0].algorithms: 'hs512' is a shared-secret"),
        ('algorithms = ["RS1"]', "oauth.issuers[0].algorithms: unknown algorithm 'RS1'"),
        ("algorithms = []", "oauth.issuers[0].algorithms: must name at least one"),
        ('clock_skew = "1h"', "oauth.issuers[0].clock_skew: must be between 0s and 10m"),
        ('max_token_size = "1MiB"', "oauth.issuers[0].max_token_size: must be between"),
        ('user_claim = "a b"', "oauth.issuers[0].user_claim: expected a claim name"),
        ('jwks_timeout = "0s"', "oauth.issuers[0].jwks_timeout: must be between"),
        ('jwks_refresh_interval = "0s"', "oauth.issuers[0].jwks_refresh_interval: must be"),
        ('jwks_file = "missing.json"', "oauth.issuers[0].jwks_file: file not found"),
        ("audiences = 1", "oauth.issuers[0].audiences: unknown key"),
    ],
)  # fmt: skip
def test_refusals_name_the_key(extra: str, message: str, tmp_path: Path) -> None:
    assert message in error_of(GOOD + extra + "\n", tmp_path)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ('audience = "x"\njwks_uri = "https://a.example/k"', "issuers[0].issuer: required"),
        ('issuer = "https://a.example"\njwks_uri = "https://a.example/k"',
         "oauth.issuers[0].audience: required key is missing"),
        ('issuer = "https://a.example"\naudience = ""\njwks_uri = "https://a.example/k"',
         "oauth.issuers[0].audience: expected the audience"),
        ('issuer = "https://a.example"\naudience = "x"',
         "oauth.issuers[0].jwks_uri: set exactly one of jwks_uri"),
        ('issuer = "https://a.example"\naudience = "x"\njwks_uri = "http://a.example/k"',
         "oauth.issuers[0].jwks_uri: 'http://a.example/k' is plain HTTP"),
        ('issuer = "https://a.example"\naudience = "x"\njwks_uri = "ftp://a.example/k"',
         "oauth.issuers[0].jwks_uri: expected an https:// URL"),
        ('issuer = " https://a.example"\naudience = "x"\njwks_uri = "https://a.example/k"',
         "oauth.issuers[0].issuer: expected the provider's exact issuer URL"),
    ],
)  # fmt: skip
def test_issuer_table_refusals(table: str, message: str, tmp_path: Path) -> None:
    assert message in error_of("[[oauth.issuers]]\n" + table + "\n", tmp_path)


def test_duplicate_issuer_and_unknown_oauth_key(tmp_path: Path) -> None:
    assert "oauth.issuers[1].issuer: 'https://kc.example.com/realms/R' is configured twice" in (
        error_of(GOOD + GOOD, tmp_path)
    )
    assert "config.toml: oauth.issuer: unknown key" in error_of('[oauth]\nissuer = "x"\n', tmp_path)
