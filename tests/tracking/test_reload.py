"""SIGHUP on a running daemon: a new tracking secret, IP treatment, bot rules and the access
log take effect without a restart; tokens signed with the old secret keep working."""

from __future__ import annotations

import sqlite3
import time
import urllib.error
import urllib.request
from pathlib import Path

from mtaserver.tracking.tokens import TokenCodec, load_secrets
from tests.support.daemon import Daemon, TestConfig, free_port

BROWSER = "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"
NEW_SECRET = b"rotated-secret-0123456789abcdef0123"


def _get(url: str) -> int:
    req = urllib.request.Request(url, headers={"User-Agent": BROWSER})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # a new connection each time
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def _opens(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT data ->> 'client_ip', coalesce(data ->> 'reason', '') FROM events "
            "WHERE type = 'open' ORDER BY id"
        )
        return [(str(ip), str(reason)) for ip, reason in rows]


def _wait_opens(db: Path, n: int) -> list[tuple[str, str]]:
    deadline = time.monotonic() + 20
    while len(rows := _opens(db)) < n and time.monotonic() < deadline:
        time.sleep(0.1)
    return rows


def test_sighup_rotates_the_secret_and_applies_tracking_settings(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cfg = TestConfig(tmp_path, tls=False)
    cfg.set("tracking", listen=f"127.0.0.1:{port}", base_url=base, access_log=False,
            burst_window="100ms")  # fmt: skip
    with Daemon(cfg) as d:
        secret_file = Path(cfg.data["server"]["data_dir"]) / "tracking.key"
        old = TokenCodec(load_secrets(secret_file))
        new = TokenCodec((NEW_SECRET,))
        assert _get(f"{base}/o/{old.open_token('QRELOAD', 0)}.gif") == 200
        assert _get(f"{base}/o/{new.open_token('QRELOAD', 1)}.gif") == 404  # not ours yet
        assert _wait_opens(cfg.database, 1) == [("127.0.0.0", "")]  # truncated

        # Rotate (the new secret signs, the old one still verifies), show full IPs, log
        # requests, and treat this test's browser as a scanner.
        secret_file.write_bytes(NEW_SECRET + b"\n" + secret_file.read_bytes())
        rules = tmp_path / "bots.toml"
        rules.write_text('[scanners]\nuser_agents = ["firefox/133"]\n')
        cfg.set("tracking", ip_privacy="full", access_log=True, bot_rules_file=str(rules))
        cfg.write()
        d.reload()
        assert "event=tracking_reloaded secrets=2 ip_privacy=full access_log=True" in d.log()

        assert _get(f"{base}/o/{new.open_token('QRELOAD', 1)}.gif") == 200
        assert _get(f"{base}/o/{old.open_token('QRELOAD', 2)}.gif") == 200
        assert _wait_opens(cfg.database, 3)[1:] == [("127.0.0.1", "scanner-ua")] * 2
        log = d.log()
        assert log.count("component=tracking.access event=http method=GET path=/o/") == 2

        # A broken rules file is refused and the running settings stay.
        rules.write_text("[scanners]\nuser_agents = 3\n")
        d.reload()
        assert "event=reload_failed service=tracking" in d.log()
        assert _get(f"{base}/o/{new.open_token('QRELOAD', 3)}.gif") == 200
        assert _wait_opens(cfg.database, 4)[3] == ("127.0.0.1", "scanner-ua")
