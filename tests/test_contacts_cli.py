"""``mtaserver contacts`` as an operator runs it (subprocesses on a real database): a CSV
import with a bad line exits 1 naming it, export → import → export is a fixed point in
both formats, ``--list`` creates and fills the list, show and delete, a missing user or
contact is one line on stderr and exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.daemon import ROOT, TestConfig

pytestmark = pytest.mark.pg_pending("contacts")

CSV = (
    "email,name,plan\n"
    "Ann@Example.org,Ann,pro\n"
    'bob@example.org,"Bob, Jr.",free\n'
    "not-an-address,X,pro\n"
    "cy@example.org,Cy,\n"
)


def cli(cfg: TestConfig, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(
        [sys.executable, "-m", "mtaserver", *args, "-c", str(cfg.path)],
        input=stdin, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert "Traceback" not in r.stderr, r.stderr
    return r


def setup(tmp_path: Path, user: str = "app") -> TestConfig:
    cfg = TestConfig(tmp_path, tls=False)
    cfg.write()
    r = cli(cfg, "user", "add", user, "--domain", "example.com", "--password-stdin",
            stdin="a long password\n")  # fmt: skip
    assert r.returncode == 0, r.stderr
    return cfg


def test_import_export_round_trip(tmp_path: Path) -> None:
    cfg = setup(tmp_path)
    src = tmp_path / "in.csv"
    src.write_text(CSV)
    r = cli(cfg, "contacts", "import", str(src), "--user", "app", "--list", "news")
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines() == ["line 4: email: not an email address: 'not-an-address'"]
    assert r.stdout.strip() == "4 rows: 3 created, 0 updated, 1 refused"
    out = cli(cfg, "contacts", "export", "--user", "app")
    assert out.returncode == 0 and out.stderr.strip() == "exported 3 contacts"
    lines = out.stdout.splitlines()
    assert lines[0] == "email,consent_status,consent_source,consent_at,consent_ip,name,plan"
    assert [x.split(",")[0] for x in lines[1:]] == [
        "ann@example.org", "bob@example.org", "cy@example.org"]  # fmt: skip
    assert lines[2].startswith("bob@example.org,subscribed,cli,") and lines[2].endswith(
        ',"Bob, Jr.",free')  # fmt: skip
    assert lines[3].endswith(",Cy,")  # an empty cell is no attribute
    # Export → import into another user → export: the same contacts and attributes.
    cli(cfg, "user", "add", "copy", "--domain", "example.net", "--password-stdin",
        stdin="a long password\n")  # fmt: skip
    dump = tmp_path / "dump.csv"
    dump.write_text(out.stdout)
    r = cli(cfg, "contacts", "import", str(dump), "--user", "copy")
    assert r.returncode == 0 and r.stdout.strip() == "3 rows: 3 created, 0 updated, 0 refused"
    again = cli(cfg, "contacts", "export", "--user", "copy")
    strip = [x.split(",")[:2] + x.split(",")[5:] for x in lines]  # consent source/time differ
    assert [x.split(",")[:2] + x.split(",")[5:] for x in again.stdout.splitlines()] == strip
    # JSON lines the same way, through stdin.
    js = cli(cfg, "contacts", "export", "--user", "app", "--format", "jsonl")
    rows = [json.loads(x) for x in js.stdout.splitlines()]
    assert rows[1]["attributes"] == {"name": "Bob, Jr.", "plan": "free"}
    assert rows[2]["attributes"] == {"name": "Cy"}
    cli(cfg, "user", "add", "third", "--domain", "example.org", "--password-stdin",
        stdin="a long password\n")  # fmt: skip
    r = cli(cfg, "contacts", "import", "-", "--user", "third", "--format", "jsonl",
            stdin=js.stdout)  # fmt: skip
    assert r.returncode == 0, r.stderr
    js3 = cli(cfg, "contacts", "export", "--user", "third", "--format", "jsonl")
    pick = [(x["email"], x["attributes"], x["consent"]) for x in rows]
    assert [(x["email"], x["attributes"], x["consent"]) for x in map(
        json.loads, js3.stdout.splitlines())] == pick  # fmt: skip


def test_show_delete_and_mistakes(tmp_path: Path) -> None:
    cfg = setup(tmp_path)
    src = tmp_path / "in.jsonl"
    src.write_text('{"email": "a@x.test", "attributes": {"plan": "pro", "n": 3}}\n')
    assert cli(cfg, "contacts", "import", str(src), "--user", "app").returncode == 0
    r = cli(cfg, "contacts", "show", "A@x.test", "--user", "app")
    assert r.returncode == 0, r.stderr
    shown = json.loads(r.stdout)
    assert shown["attributes"] == {"plan": "pro", "n": 3} and shown["consent"]["source"] == "cli"
    for args, message in [
        (("show", "b@x.test", "--user", "app"), "no contact b@x.test for user app"),
        (("show", "a@x.test", "--user", "nobody"), "--user: no user 'nobody'"),
        (("show", "not-an-address", "--user", "app"), "ADDRESS: not an email address"),
        (("import", str(tmp_path / "missing.csv"), "--user", "app"), "no such file"),
        (("export", "--user", "nobody"), "--user: no user"),
    ]:
        r = cli(cfg, "contacts", *args)
        assert r.returncode == 2, (args, r.stderr)
        assert len(r.stderr.splitlines()) == 1 and message in r.stderr, r.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("name\nAnn\n")
    r = cli(cfg, "contacts", "import", str(bad), "--user", "app")
    assert r.returncode == 2 and "header: the first row must name exactly one 'email'" in r.stderr
    assert cli(cfg, "contacts", "delete", "a@x.test", "--user", "app").returncode == 0
    assert cli(cfg, "contacts", "delete", "a@x.test", "--user", "app").returncode == 2
