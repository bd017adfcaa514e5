"""A daemon loads only what its config turns on.

Every test daemon and every real start pays for what ``serve`` imports (~0.1 s of CPU per
library). The optional services import their libraries in the function that builds them,
so a daemon with the defaults (SQLite, SMTP submission and delivery; no API, admin,
tracking, webhooks, OAuth, cluster) must not load aiohttp, asyncpg, redis or PyJWT. The
check runs a real start to READY (services built and started) in a fresh interpreter.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.daemon import ROOT, TestConfig

# `mtaserver serve -c CONFIG` in-process (the CLI's parser and config loading, then the
# daemon) until READY, stopped there; prints what it had imported.
_PROBE = """
import sys, uvloop
from mtaserver.app import App
from mtaserver.cli import build_parser
from mtaserver.cli._common import config_from
from mtaserver.notify import Notifier

class StopWhenReady(Notifier):
    def ready(self):
        app.request_stop()

args = build_parser("serve").parse_args(["serve", "-c", sys.argv[1]])
app = App(config_from(args), notifier=StopWhenReady(""))
uvloop.run(app.run())
print(" ".join(sorted(sys.modules)))
"""

OPTIONAL = ("aiohttp", "asyncpg", "redis", "jwt", "mtaserver.api", "mtaserver.admin")


def _loaded(cfg: TestConfig) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(cfg.write())],
        capture_output=True, text=True, timeout=120, cwd=ROOT, check=True,
    )  # fmt: skip
    return set(out.stdout.split())


def test_a_default_daemon_loads_no_http_postgres_redis_or_jwt_library(tmp_path: Path) -> None:
    loaded = _loaded(TestConfig(tmp_path))
    # It did start: the wiring, the SMTP listener and the delivery client are there.
    assert {"mtaserver.app.wiring", "aiosmtpd.smtp", "aiosmtplib"} <= loaded
    unwanted = sorted(m for m in loaded for o in OPTIONAL if m == o or m.startswith(o + "."))
    assert unwanted == []
