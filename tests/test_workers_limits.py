"""With ``workers = 2`` the per-IP connection cap and the AUTH lockout are the daemon's.

The kernel spreads one client's connections over both workers (SO_REUSEPORT), so a limit
counted in each worker would let an address have up to twice its allowance. Every
connection here comes from 127.0.0.1; with a dozen of them both workers take some (all on
one worker: p ≈ 2⁻¹¹), so a per-process count would admit more than the cap.
"""

from __future__ import annotations

import base64
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator

import pytest

from tests.support.daemon import Daemon, TestConfig, free_port

CAP = 4
LOCKOUT = 4
PASSWORD = "limits password 123"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, TestConfig]]:
    cfg = TestConfig(tmp_path_factory.mktemp("limits"))
    cfg.set("server", workers=2)
    cfg.set("delivery", relay_host=f"127.0.0.1:{free_port()}", tls="none")  # nothing there
    cfg.set("submission", max_connections_per_ip=CAP, trusted_networks=["10.99.0.0/16"])
    # no delays (they would only slow the test), lockout after LOCKOUT failures
    cfg.set("submission.auth", delay_after=100, lockout_after=LOCKOUT, window="1h")
    d = Daemon(cfg)
    d.start()
    try:
        added = d.cli("user", "add", "app", "--domain", "example.com", "--password-stdin",
                      input=PASSWORD.encode() + b"\n")  # fmt: skip
        assert added.returncode == 0, added.stderr
        yield d, cfg
    finally:
        d.stop()


def _greeting(port: int) -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s, s.recv(512)


def test_the_per_ip_cap_holds_across_both_workers(daemon: tuple[Daemon, TestConfig]) -> None:
    _, cfg = daemon
    _, port = cfg.address("submission", "listen_plain")
    opened = [_greeting(port) for _ in range(12)]
    try:
        admitted = [s for s, line in opened if line.startswith(b"220")]
        refused = [line for _, line in opened if not line.startswith(b"220")]
        assert len(admitted) == CAP, [line for _, line in opened]
        assert all(line.startswith(b"421 4.7.0") for line in refused)
        # two admitted ones close: two new ones get in again, whichever worker had them
        for s in admitted[:2]:
            s.close()
        again: list[socket.socket] = []
        deadline = time.monotonic() + 10
        while len(again) < 2 and time.monotonic() < deadline:
            s, line = _greeting(port)
            if line.startswith(b"220"):
                again.append(s)
            else:  # the worker has not seen the close yet
                s.close()
                time.sleep(0.05)
        assert len(again) == 2
        s, line = _greeting(port)
        s.close()
        assert line.startswith(b"421"), line  # and the cap is full again
        for s in again:
            s.close()
    finally:
        for s, _ in opened:
            s.close()


def _auth(cfg: TestConfig, password: str) -> int:
    _, port = cfg.address("submission", "listen_tls")
    ctx = ssl.create_default_context()
    cfg.ca.configure_trust(ctx)
    with smtplib.SMTP_SSL("127.0.0.1", port, context=ctx, timeout=10) as client:
        client.ehlo("client.test")
        blob = base64.b64encode(f"\0app\0{password}".encode()).decode()
        try:
            code, _ = client.docmd("AUTH", f"PLAIN {blob}")
        except smtplib.SMTPServerDisconnected:
            return 421
        return code


def test_the_auth_lockout_counts_failures_on_both_workers(
    daemon: tuple[Daemon, TestConfig],
) -> None:
    _, cfg = daemon
    assert _auth(cfg, PASSWORD) == 235  # the account works
    assert [_auth(cfg, "wrong") for _ in range(LOCKOUT - 1)] == [535] * (LOCKOUT - 1)
    assert _auth(cfg, "wrong") in (421, 535)  # the LOCKOUT-th failure locks
    # locked for the daemon: every new connection, whichever worker takes it
    assert [_auth(cfg, PASSWORD) for _ in range(6)] == [421] * 6
