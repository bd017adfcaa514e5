"""``mtaserver triggers`` and ``mtaserver events send`` as the operator runs them (a
subprocess on a real database, either backend: seeded and read back through the owners,
``tests.support.daemon.open_stores``): a trigger put through the CLI is listed and shown, an event
sent through the CLI starts its sequence (the pending steps read back through
JourneyStore), a cancel event stops it, delete removes it; bad input is exit 2 with one
line naming the field."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from mtaserver.auth import hash_password
from mtaserver.contacts import ContactInput
from tests.support.cli import fails, ok, run_as
from tests.support.daemon import TestConfig, open_stores

USER = "alice@example.com"
HASH = hash_password("correct horse battery", n=2**10)
TRIGGER = {
    "event": "cart",
    "steps": [{"wait": "1h", "template": "reminder"}, {"wait": "1d", "template": "reminder"}],
    "cancel": ["purchase"],
    "from": {"email": "shop@example.com", "name": "Shop"},
}


def run(config: Path, *argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return run_as(USER, config, *argv, stdin=stdin)


async def _seed(cfg: TestConfig) -> None:
    async with open_stores(cfg) as s:
        await s.users.add(USER, HASH, ["example.com"])
        await s.contacts.upsert(USER, ContactInput("ann@example.org", '{"name":"Ann"}'))
        await s.templates.put("reminder", "Your cart", None, "Still there?")


def _steps(cfg: TestConfig) -> dict[int, dict[str, int]]:
    async def read() -> dict[int, dict[str, int]]:
        async with open_stores(cfg) as s:
            counts: dict[int, dict[str, int]] = await s.journeys.step_counts(USER, "cart")
            return counts

    return asyncio.run(read())


@pytest.fixture
def config(tmp_path: Path) -> tuple[Path, TestConfig]:
    cfg = TestConfig(tmp_path, tls=False)
    cfg.write()
    asyncio.run(_seed(cfg))
    return cfg.path, cfg


def test_put_list_show_send_delete(config: tuple[Path, TestConfig], tmp_path: Path) -> None:
    path, cfg = config
    doc = tmp_path / "cart.json"
    doc.write_text(json.dumps(TRIGGER))
    assert ok(run(path, "triggers", "put", "cart", f"@{doc}")).strip() == "created trigger cart"
    again = run(path, "triggers", "put", "cart", "@-", stdin=json.dumps(TRIGGER))
    assert ok(again).strip() == "replaced trigger cart"

    lines = ok(run(path, "triggers", "list")).splitlines()
    assert len(lines) == 1 and lines[0].split("\t")[:4] == ["cart", "cart", "enabled", "2 steps"]
    shown = json.loads(ok(run(path, "triggers", "show", "cart")))
    assert shown["steps"] == TRIGGER["steps"] and shown["cancel"] == ["purchase"]
    assert shown["step_counts"] == {}

    sent = run(path, "events", "send", "--contact", "Ann@Example.org", "--event", "cart",
               "--properties", '{"items": 2}')  # fmt: skip
    assert json.loads(ok(sent)) == {"stored": 1, "started": 1, "cancelled": 0,
                                    "unknown_contacts": []}  # fmt: skip
    pending = {"pending": 1, "fired": 0, "cancelled": 0, "skipped": 0}
    assert _steps(cfg) == {0: pending, 1: pending}
    shown = json.loads(ok(run(path, "triggers", "show", "cart")))
    assert shown["step_counts"] == {"0": pending, "1": pending}

    # a resent event starts nothing twice (no once_per: once per contact, ever)
    ok(run(path, "events", "send", "--contact", "ann@example.org", "--event", "cart"))
    assert _steps(cfg) == {0: pending, 1: pending}

    bought = run(path, "events", "send", "--contact", "ann@example.org", "--event", "purchase")
    assert json.loads(ok(bought))["cancelled"] == 2
    gone = {"pending": 0, "fired": 0, "cancelled": 1, "skipped": 0}
    assert _steps(cfg) == {0: gone, 1: gone}

    assert ok(run(path, "triggers", "delete", "cart")).strip() == "deleted trigger cart"
    assert _steps(cfg) == {}
    assert ok(run(path, "triggers", "list")) == ""
    fails(run(path, "triggers", "show", "cart"), "no trigger 'cart'")
    fails(run(path, "triggers", "delete", "cart"), "no trigger 'cart'")


@pytest.mark.parametrize(
    ("definition", "field"),
    [
        ({**TRIGGER, "steps": [{"wait": "soon", "template": "reminder"}]}, "steps[0].wait"),
        ({**TRIGGER, "steps": []}, "steps:"),
        ({**TRIGGER, "colour": "red"}, "colour: unknown field"),
        ({**TRIGGER, "from": "nobody"}, "from.email"),
        ({**TRIGGER, "cancel": ["cart"]}, "cancel:"),
        ({**TRIGGER, "steps": [{"template": "nosuch"}]}, "steps[0].template: no stored template"),
        ("{not json", "JSON: not JSON"),
        ("[]", "trigger: expected a JSON object"),
    ],
)
def test_bad_trigger_names_the_field(
    config: tuple[Path, TestConfig], definition: object, field: str
) -> None:
    path, _ = config
    text = definition if isinstance(definition, str) else json.dumps(definition)
    fails(run(path, "triggers", "put", "cart", text), field)
    assert ok(run(path, "triggers", "list")) == ""


def test_bad_input_is_one_line(config: tuple[Path, TestConfig], tmp_path: Path) -> None:
    path, cfg = config
    fails(run(path, "triggers", "put", "bad name!", json.dumps(TRIGGER)), "NAME:")
    fails(run(path, "triggers", "put", "cart", f"@{tmp_path}/missing.json"), "missing.json")
    ok(run(path, "triggers", "put", "cart", json.dumps(TRIGGER)))
    send = ("events", "send", "--event", "cart")
    fails(run(path, *send, "--contact", "nobody@example.org"), "--contact: nobody@example.org",
          "not a contact")  # fmt: skip
    fails(run(path, *send, "--contact", "not-an-address"), "--contact")
    fails(run(path, *send, "--contact", "ann@example.org", "--properties", "[1]"),
          "--properties: a JSON object")  # fmt: skip
    fails(run(path, "events", "send", "--contact", "ann@example.org", "--event", "no good"),
          "--event:")  # fmt: skip
    assert _steps(cfg) == {}
    fails(run_as("nobody", path, "triggers", "list"), "--user: no user 'nobody'")
