"""A running daemon swaps its active DKIM selector on SIGHUP and keeps its keys on a bad one."""

from __future__ import annotations

import os
import re
from pathlib import Path

from mtaserver.dkim import keys as K
from tests.support.daemon import Daemon, TestConfig
from tests.support.dkimtools import dkim_entries, make_key


def _signing(log: str) -> list[str]:
    return re.findall(r"event=dkim_keys_loaded keys=\d+ signing=(\S+)", log)


def test_sighup_switches_active_selector(tmp_path: Path) -> None:
    keys = [
        make_key(tmp_path, "example.com", "s1", K.Algorithm.RSA),
        make_key(tmp_path, "example.com", "s2", K.Algorithm.RSA),
        make_key(tmp_path, "example.com", "ed1", K.Algorithm.ED25519),
    ]
    cfg = TestConfig(tmp_path, tls=False)
    cfg.data["dkim"] = dkim_entries(keys, {"s1", "ed1"})
    with Daemon(cfg) as daemon:
        assert _signing(daemon.log()) == ["example.com/s1,example.com/ed1"]
        cfg.data["dkim"] = dkim_entries(keys, {"s2", "ed1"})
        cfg.write()
        daemon.reload()
        assert _signing(daemon.log())[-1] == "example.com/s2,example.com/ed1"

        # A key others can read fails the reload: the daemon keeps signing with s2.
        os.chmod(keys[0].path, 0o644)
        cfg.data["dkim"] = dkim_entries(keys, {"s1", "ed1"})
        cfg.write()
        daemon.reload()
        log = daemon.log()
        assert "reload_rejected" in log and "dkim[0].key" in log
        assert _signing(log)[1:] == ["example.com/s2,example.com/ed1"]
        assert daemon.cli("check-config").returncode == 2
