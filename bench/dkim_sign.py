"""Per-message DKIM signing cost: mtaserver's signer against stock ``dkim.sign()``.

Run: ``.venv/bin/python -m bench.dkim_sign [--n 300]``

Both sides sign the same 4 KB and 100 KB messages with relaxed/relaxed in the same process,
for RSA-2048 and Ed25519; the ratio is stock time / ours. A last line measures the async
``DkimSigner`` with a thread pool (cryptography releases the GIL during the RSA operation).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from mtaserver.clock import SystemClock
from mtaserver.dkim import keys as K
from mtaserver.dkim.signer import DkimSigner, include_headers, sign_message, split_message


def make_message(size: int) -> bytes:
    head = (
        b"From: Newsletter <news@example.com>\r\n"
        b"To: reader@example.org\r\n"
        b"Subject: This week at Example: product news and a long enough subject line\r\n"
        b"Date: Fri, 27 Nov 2026 14:00:00 +0000\r\n"
        b"Message-ID: <20261127140000.abcdef@example.com>\r\n"
        b"MIME-Version: 1.0\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"List-Unsubscribe: <https://t.example.com/u/abcdef>\r\n"
        b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"
        b"\r\n"
    )
    line = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\r\n"
    body = line * ((size - len(head)) // len(line) + 1)
    return head + body[: size - len(head) - 2] + b"\r\n"


def per_message(fn: Callable[[], object], n: int) -> float:
    """Best of three runs of n calls, in milliseconds per call."""
    fn()
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1000


def load_keys(tmp: Path) -> dict[K.Algorithm, tuple[K.DkimKey, bytes]]:
    """Our loaded key and the private key in the form stock dkimpy takes."""
    out = {}
    for alg in K.Algorithm:
        path = tmp / f"{alg.value}.pem"
        K.write_private_key(path, K.generate_key(alg, 2048))
        key = K.load_key(path, domain="example.com", selector="bench", algorithm=alg)
        if isinstance(key.private_key, ed25519.Ed25519PrivateKey):
            seed = key.private_key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
            stock = base64.b64encode(seed)
        else:
            stock = key.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        out[alg] = (key, stock)
    return out


async def async_throughput(keyset: K.KeySet, msg: bytes, count: int, workers: int) -> float:
    with ThreadPoolExecutor(max_workers=workers) as pool:
        signer = DkimSigner(keyset, SystemClock(), executor=pool)
        await signer.sign(msg)
        t0 = time.perf_counter()
        await asyncio.gather(*(signer.sign(msg) for _ in range(count)))
        return count / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=300, help="messages per timing run")
    ap.add_argument("--stock-n", type=int, default=0, help="for stock dkimpy (default n/5)")
    args = ap.parse_args(argv)
    stock_n = args.stock_n or max(1, args.n // 5)
    rows: list[dict[str, object]] = []
    with tempfile.TemporaryDirectory() as d:
        keys = load_keys(Path(d))
        now = int(time.time())
        print(f"{'algorithm':<10} {'size':>6} {'mtaserver ms':>13} {'stock ms':>9} {'ratio':>7}")
        for alg in (K.Algorithm.RSA, K.Algorithm.ED25519):
            key, stock_key = keys[alg]
            keyset = K.KeySet.build([key])
            for size in (4096, 102400):
                msg = make_message(size)
                names = [n.decode() for n in include_headers(split_message(msg)[0])]
                ours = per_message(lambda m=msg, ks=keyset: sign_message(m, ks, now), args.n)
                theirs = per_message(
                    lambda m=msg, k=stock_key, a=alg, h=names: dkim.sign(
                        m,
                        b"bench",
                        b"example.com",
                        k,
                        canonicalize=(b"relaxed", b"relaxed"),
                        include_headers=[x.encode() for x in h],
                        signature_algorithm=a.signature_algorithm,
                    ),
                    stock_n,
                )
                ratio = theirs / ours
                kb = f"{size // 1024}KB"
                print(f"{alg.value:<10} {kb:>6} {ours:>13.3f} {theirs:>9.3f} {ratio:>6.1f}x")
                rows.append(
                    {"algorithm": alg.value, "size": size, "ours_ms": ours, "stock_ms": theirs}
                )
        rsa_keyset = K.KeySet.build([keys[K.Algorithm.RSA][0]])
        workers = min(4, os.cpu_count() or 1)
        rate = asyncio.run(
            async_throughput(rsa_keyset, make_message(4096), max(args.n, 8), workers)
        )
        print(f"async DkimSigner, RSA-2048, 4KB, {workers} threads: {rate:.0f} messages/s")
        rows.append({"algorithm": "rsa-async", "size": 4096, "per_second": rate})
    return rows


if __name__ == "__main__":
    main()
