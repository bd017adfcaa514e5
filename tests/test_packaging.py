"""The documented install, run the way an operator runs it.

README "Install" is the contract: this test extracts its shell block and runs it line by line
for the wheel ``python -m build`` makes from the sdist (so what the sdist carries is what gets
installed) and for a plain clone (``pip install .``), each into its own fresh venv under a
temporary directory that stands in for ``/``. (Installing the sdist itself would build that
same wheel again in pip's build environment: a third install that finds nothing new.) The
installed daemon then runs from that venv, away from the checkout (another working directory,
no PYTHONPATH), so a run-time file missing from the package fails here, not on a production
machine. The substitutions are the ones README lists after the block.
"""

from __future__ import annotations

import os
import shlex
import shutil
import smtplib
import socket
import ssl
import subprocess
import sys
import tarfile
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.support.daemon import free_port, to_toml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PASSWORD = "correct horse battery staple"
pytestmark = pytest.mark.timeout(600)


def install_block() -> list[str]:
    """The shell lines between README's install markers (inside the code fence)."""
    text = README.read_text(encoding="utf-8")
    body = text.split("<!-- install:begin -->", 1)[1].split("<!-- install:end -->", 1)[0]
    lines = [ln.strip() for ln in body.splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("```") and not ln.startswith("#")]


def unit_commands(unit: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in unit.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key in ("ExecStartPre", "ExecStart"):
            out[key] = value
    return out


def clean_env() -> dict[str, str]:
    """The environment of an operator's shell: nothing pointing into this checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT))
    )
    return env


def run(argv: list[str], *, cwd: Path, input: str | None = None) -> str:
    out = subprocess.run(
        argv, cwd=cwd, input=input, capture_output=True, text=True, timeout=400, env=clean_env()
    )
    assert out.returncode == 0, f"{shlex.join(argv)} exited {out.returncode}:\n{out.stderr}"
    assert "Traceback" not in out.stderr, out.stderr
    return out.stdout


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tracked tree: what a clean clone holds."""
    dst = tmp_path_factory.mktemp("clone")
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, timeout=60, check=False
    )
    if listed.returncode == 0 and listed.stdout:
        for name in listed.stdout.decode().split("\0"):
            if name and (ROOT / name).is_file():
                (dst / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, dst / name)
    else:  # not a git checkout (an unpacked sdist): copy what is there
        shutil.copytree(
            ROOT, dst, dirs_exist_ok=True,
            ignore=shutil.ignore_patterns(".venv", "var", "build", "dist", "*.egg-info", ".*"),
        )  # fmt: skip
    return dst


@pytest.fixture(scope="module")
def dist(source: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``python -m build``: the sdist, then the wheel built from that sdist."""
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--outdir", str(out), str(source)], cwd=out)
    (wheel,) = out.glob("mtaserver-*.whl")
    (sdist,) = out.glob("mtaserver-*.tar.gz")
    return {"wheel": wheel, "sdist": sdist}


def runtime_files(source: Path) -> set[str]:
    pkg = source / "mtaserver"
    return {
        p.relative_to(source).as_posix()
        for p in pkg.rglob("*")
        if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts
    }


def test_wheel_and_sdist_carry_every_runtime_file(source: Path, dist: dict[str, Path]) -> None:
    wanted = runtime_files(source)
    assert any(name.startswith("mtaserver/storage/sqlite/migrations/") for name in wanted)
    with zipfile.ZipFile(dist["wheel"]) as whl:
        in_wheel = set(whl.namelist())
    with tarfile.open(dist["sdist"]) as sd:
        in_sdist = {m.name.split("/", 1)[1] for m in sd.getmembers() if "/" in m.name}
    assert wanted - in_wheel == set(), "missing from the wheel"
    assert wanted - in_sdist == set(), "missing from the sdist"
    # The operator needs these from an sdist too.
    for name in ("systemd/mtaserver.service", "config/mtaserver.example.toml", "README.md"):
        assert name in in_sdist, name


class Installer:
    """Runs README's install lines with the documented substitutions under ``root``."""

    def __init__(self, root: Path, source: Path, artifact: Path | None, tls: dict[str, Path]):
        self.root = root
        self.source = source
        self.artifact = artifact
        self.tls = tls
        self.ports: dict[str, int] = {}

    def path(self, text: str) -> str:
        for top in ("/opt/", "/etc/", "/var/"):
            if text.startswith(top):
                return str(self.root) + text
        return text

    def argv(self, line: str) -> list[str]:
        words = shlex.split(line)
        if words[:3] == ["runuser", "-u", "mtaserver"]:
            words = words[4:] if words[3] == "--" else words[3:]
        out: list[str] = []
        skip = False
        for i, w in enumerate(words):
            if skip:
                skip = False
                continue
            if w in ("-o", "-g") and i + 1 < len(words) and words[i + 1] == "mtaserver":
                skip = True
                continue
            if w.startswith("/path/to/"):
                out.append(str(self.tls[w.removeprefix("/path/to/")]))
            elif w == "python3" and i == 0:
                out.append(getattr(sys, "_base_executable", sys.executable))
            else:
                out.append(self.path(w))
        if out[-2:] == ["install", "."] and out[0].endswith("/pip") and self.artifact:
            out[-1] = str(self.artifact)
        return out

    def edit_config(self, config: Path) -> None:
        """The operator's edit: re-root paths, loopback ports, a resolver nobody answers."""
        text = config.read_text()
        for top in ('"/opt/', '"/etc/', '"/var/'):
            text = text.replace(top, '"' + str(self.root) + top[1:])
        data: dict[str, Any] = tomllib.loads(text)
        for section, key in (
            ("submission", "listen"), ("submission", "listen_tls"), ("inbound", "listen"),
            ("tracking", "listen"), ("admin", "listen"),
        ):  # fmt: skip
            if key in data.get(section, {}):
                self.ports[f"{section}.{key}"] = port = free_port()
                data[section][key] = f"127.0.0.1:{port}"
        data["delivery"]["nameservers"] = [f"127.0.0.1:{free_port()}"]
        config.write_text(to_toml(data))


def _wait_ready(sock: socket.socket, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            if "READY=1" in sock.recv(4096).decode().split("\n"):
                return
        except TimeoutError:
            if proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited {proc.returncode}:\n{log.read_text()}"
                ) from None
    raise AssertionError(f"no READY=1 within 60 s:\n{log.read_text()}")


def _submit(port: int, ca: trustme.CA) -> str:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.test")
        smtp.starttls(context=ctx)
        smtp.ehlo("client.test")
        smtp.login("app", PASSWORD)
        smtp.mail("news@example.com")
        smtp.rcpt("someone@example.net")
        code, reply = smtp.data(
            b"From: news@example.com\r\nTo: someone@example.net\r\nSubject: installed\r\n\r\n"
            b"Sent through the installed daemon.\r\n"
        )
    assert code == 250, reply
    return reply.decode()


@pytest.mark.parametrize("kind", ["wheel", "clone"])
def test_install_as_documented_then_serve(
    kind: str, source: Path, dist: dict[str, Path], tmp_path: Path
) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("mail.example.com", "localhost", "127.0.0.1")
    tls = {"fullchain.pem": tmp_path / "fullchain.pem", "privkey.pem": tmp_path / "privkey.pem"}
    cert.private_key_and_cert_chain_pem.write_to_path(str(tls["fullchain.pem"]))
    cert.private_key_pem.write_to_path(str(tls["privkey.pem"]))
    root = tmp_path / "root"
    root.mkdir()
    inst = Installer(root, source, None if kind == "clone" else dist[kind], tls)
    config = root / "etc/mtaserver/mtaserver.toml"
    unit: Path | None = None
    ran: list[str] = []
    for line in install_block():
        if line.startswith("useradd "):
            continue
        if line.startswith("systemctl "):
            assert unit is not None, "the unit is installed before it is started"
            ran.append("systemctl")
            break
        argv = inst.argv(line)
        is_user_add = argv[1:3] == ["user", "add"]
        if is_user_add:
            argv.append("--password-stdin")
        run(argv, cwd=source, input=PASSWORD + "\n" if is_user_add else None)
        ran.append(argv[1] if argv[0].endswith("mtaserver") else Path(argv[0]).name)
        if argv[0] == "install" and argv[-1] == str(config):
            inst.edit_config(config)
        if argv[0] == "install" and argv[-1].endswith("/mtaserver.service"):
            unit = Path(argv[-1])
    assert ran[-1] == "systemctl" and "user" in ran and "check-config" in ran, ran

    # What systemd would run, from the installed unit, with the re-rooted paths.
    assert unit is not None
    venv = root / "opt/mtaserver"
    cmds = {k: [inst.path(w) for w in shlex.split(v)] for k, v in unit_commands(unit).items()}
    assert cmds["ExecStart"][0] == str(venv / "bin/mtaserver"), "unit and README disagree"
    located = run([str(venv / "bin/python"), "-c", "import mtaserver; print(mtaserver.__file__)"],
                  cwd=tmp_path)  # fmt: skip
    assert located.startswith(str(venv)), f"imported from {located}"
    run(cmds["ExecStartPre"], cwd=tmp_path)

    sock_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(sock_path))
    log = tmp_path / "daemon.log"
    env = dict(clean_env(), NOTIFY_SOCKET=str(sock_path))
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cmds["ExecStart"], cwd=tmp_path, env=env, stdout=logf,
                                stderr=subprocess.STDOUT)  # fmt: skip
        try:
            _wait_ready(notify, proc, log)
            reply = _submit(inst.ports["submission.listen"], ca)
            queued = run([str(venv / "bin/mtaserver"), "queue", "list", "-c", str(config)],
                         cwd=tmp_path)  # fmt: skip
            assert "someone@example.net" in queued, queued
            assert queued.split()[0] in reply, (queued, reply)
        finally:
            if proc.poll() is None:
                proc.terminate()
            try:
                code = proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            notify.close()
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text and "event=fatal" not in text, text
    assert "event=stopped" in text
