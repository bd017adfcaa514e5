"""What checking an OAuth access token costs on the loop, against a password check.

Run: ``.venv/bin/python -m bench.oauth_verify [--rounds 2000]``

Measured in one process: ``scrypt`` is one password KDF (``verify_password``, what an
uncached AUTH PLAIN costs, in a worker thread — the baseline); ``RS256``, ``ES256`` and
``EdDSA`` are ``TokenVerifier.verify`` of a valid token with cached keys (signature and
claims, on the event loop); ``oversize`` is refusing a 1 MiB token. Each is the median
per call; the ratio is against scrypt. Since verification runs on the loop, its per-call
time is also the longest the loop is held by one AUTH.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

from mtaserver.auth import hash_password, verify_password
from mtaserver.clock import SystemClock
from mtaserver.config.oauth import parse as parse_oauth
from mtaserver.config.reader import Reader
from mtaserver.oauth import TokenInvalid, TokenVerifier
from tests.support.oidc_issuer import Issuer


def _median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


async def run(rounds: int) -> dict[str, float]:
    issuer = Issuer()
    issuer.port = 1  # tokens name the issuer URL; keys come from the file below
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "jwks.json"
        path.write_text(json.dumps(issuer.jwks()))
        table = {"issuer": issuer.url, "audience": "mtaserver", "jwks_file": str(path),
                 "user_claim": "preferred_username"}  # fmt: skip
        cfg = parse_oauth(Reader({"issuers": [table]}, "bench.toml", "oauth"))
        verifier = TokenVerifier(cfg, SystemClock())
    results: dict[str, float] = {}
    encoded = hash_password("correct horse battery staple")
    kdf = []
    for _ in range(max(5, rounds // 100)):
        t = time.perf_counter()
        verify_password(b"correct horse battery staple", encoded)
        kdf.append(time.perf_counter() - t)
    results["scrypt"] = _median_us(kdf)
    for alg in ("RS256", "ES256", "EdDSA"):
        token = issuer.token("alice", alg=alg, lifetime=3600)
        samples = []
        for _ in range(rounds):
            t = time.perf_counter()
            await verifier.verify(token)
            samples.append(time.perf_counter() - t)
        results[alg] = _median_us(samples)
    huge = "a" * (1024 * 1024)
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        with contextlib.suppress(TokenInvalid):
            await verifier.verify(huge)
        samples.append(time.perf_counter() - t)
    results["oversize"] = _median_us(samples)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2000)
    args = ap.parse_args()
    results = asyncio.run(run(args.rounds))
    base = results["scrypt"]
    print(f"{'check':10} {'µs/call':>10} {'vs scrypt':>10}")
    for name, us in results.items():
        print(f"{name:10} {us:10.1f} {us / base:10.4f}")


if __name__ == "__main__":
    main()
