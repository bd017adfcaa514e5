"""The shipped unit file is valid and carries the options operators rely on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

UNIT = Path(__file__).resolve().parents[1] / "systemd" / "mtaserver.service"


def _service_section() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = ""
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line.startswith("["):
            section = line
        elif line and not line.startswith("#") and section == "[Service]":
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_unit_has_notify_sandbox_and_capabilities() -> None:
    svc = _service_section()
    assert svc["Type"] == ["notify"]
    assert "serve" in svc["ExecStart"][0]
    assert svc["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    # workers > 1: only the owner may notify (one READY=1), and stop signals every process
    # at once (test_workers_reliability.py drains exactly that way)
    assert svc["NotifyAccess"] == ["main"]
    assert svc.get("KillMode", ["control-group"]) == ["control-group"]
    assert svc["AmbientCapabilities"] == ["CAP_NET_BIND_SERVICE"]
    for key in ("StateDirectory", "User", "Group"):
        assert svc[key] == ["mtaserver"]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert svc[key] == ["yes"]
    assert svc["ProtectSystem"] == ["strict"]
    assert "AF_INET" in svc["RestrictAddressFamilies"][0]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify wants the ExecStart binaries to exist: point them at stand-ins.
    fake = tmp_path / "mtaserver"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    unit = tmp_path / "mtaserver.service"
    unit.write_text(UNIT.read_text().replace("/opt/mtaserver/bin/mtaserver", str(fake)))
    out = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    problems = [
        line for line in (out.stdout + out.stderr).splitlines()
        if str(unit) in line or "mtaserver.service" in line
    ]  # fmt: skip
    assert out.returncode == 0 and not problems, out.stdout + out.stderr
