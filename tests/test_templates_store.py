"""Stored templates through the real ``mtaserver template`` CLI (a subprocess on a real
database): put prints a d-<hex> id, each put adds an active version, older versions stay
selectable, a syntax error is refused naming the part and line and stores nothing, and
``TemplateStore.get`` (what the send API calls) returns the active version by id or name."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

from mtaserver.sendapi import StoredTemplate
from tests.support.daemon import ROOT, TestConfig, open_stores


def cli(cfg: TestConfig, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mtaserver", "template", *args, "-c", str(cfg.path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip


async def active(cfg: TestConfig, ref: str) -> StoredTemplate | None:
    async with open_stores(cfg) as stores:
        return await stores.templates.get(ref)


def test_template_cli_versions_and_get(tmp_path: Path) -> None:
    cfg = TestConfig(tmp_path, tls=False)
    cfg.write()
    Path(cfg.data["server"]["data_dir"]).mkdir(parents=True, exist_ok=True)
    (tmp_path / "v1.html").write_text("<p>Hi {{name}}</p>\n")
    (tmp_path / "v1.txt").write_text("Hi {{name}}\n")
    (tmp_path / "v2.html").write_text("<p>Hello {{name}}{{#if vip}}!{{/if}}</p>\n")
    out = cli(cfg, "put", "welcome", "--html", str(tmp_path / "v1.html"),
              "--text", str(tmp_path / "v1.txt"), "--subject", "Welcome {{name}}")  # fmt: skip
    assert out.returncode == 0, out.stderr
    tid = out.stdout.strip()
    assert re.fullmatch(r"d-[0-9a-f]{32}", tid), out.stdout
    assert "version 1 is active" in out.stderr

    out = cli(cfg, "put", "welcome", "--html", str(tmp_path / "v2.html"), "--subject", "Hey")
    assert out.returncode == 0 and out.stdout.strip() == tid, out.stderr
    assert "version 2 is active" in out.stderr
    v2 = StoredTemplate(subject="Hey", html="<p>Hello {{name}}{{#if vip}}!{{/if}}</p>\n")
    assert asyncio.run(active(cfg, tid)) == v2
    assert asyncio.run(active(cfg, "welcome")) == v2
    assert asyncio.run(active(cfg, "d-" + "0" * 32)) is None
    assert asyncio.run(active(cfg, "nope")) is None

    # a syntax error names the part and the line, and adds no version
    (tmp_path / "bad.txt").write_text("line one\nline two {{#each items}} never closed\n")
    out = cli(cfg, "put", "welcome", "--text", str(tmp_path / "bad.txt"))
    assert out.returncode == 2
    assert "template text:" in out.stderr and "line 2" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert asyncio.run(active(cfg, tid)) == v2
    out = cli(cfg, "put", "other", "--html", str(tmp_path / "nothere.html"))
    assert out.returncode == 2 and "--html" in out.stderr and "nothere.html" in out.stderr

    out = cli(cfg, "list")
    assert out.returncode == 0
    (line,) = out.stdout.splitlines()
    assert line.startswith(f"{tid}\twelcome\tactive v2\t2 versions")

    out = cli(cfg, "show", "welcome", "--version", "1")
    assert out.returncode == 0, out.stderr
    assert "version 1, created" in out.stdout and "Hi {{name}}" in out.stdout
    assert "Welcome {{name}}" in out.stdout
    out = cli(cfg, "show", tid)
    assert "version 2 (active)" in out.stdout and "--- text (none)" in out.stdout
    out = cli(cfg, "show", "welcome", "--version", "7")
    assert out.returncode == 2 and "no version 7" in out.stderr

    out = cli(cfg, "activate", "welcome", "1")
    assert out.returncode == 0 and "version 1 is active" in out.stdout
    assert asyncio.run(active(cfg, "welcome")) == StoredTemplate(
        subject="Welcome {{name}}", html="<p>Hi {{name}}</p>\n", text="Hi {{name}}\n"
    )
    out = cli(cfg, "activate", "welcome", "3")
    assert out.returncode == 2 and "no version 3" in out.stderr

    out = cli(cfg, "put", "d-bad name", "--text", str(tmp_path / "v1.txt"))
    assert out.returncode == 2 and "template name" in out.stderr

    out = cli(cfg, "delete", "welcome")
    assert out.returncode == 0 and "2 versions" in out.stdout
    assert asyncio.run(active(cfg, tid)) is None
    out = cli(cfg, "delete", "welcome")
    assert out.returncode == 2 and "no template 'welcome'" in out.stderr
    assert cli(cfg, "list").stdout == ""
