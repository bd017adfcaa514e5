"""Every CLI command and every admin API read, on three database states (empty, all recipients
final, busy; see tests/support/dbstates.py): never a traceback, never a 500; operator mistakes
are one line on stderr and exit 2.

The commands come from the real parser: a subcommand added without a row in ``CASES`` (or a
reason in ``ELSEWHERE``) fails ``test_every_subcommand_has_cases``. Each case runs as the
operator runs it, ``python -m mtaserver ... -c CONFIG``, on its own copy of the state's
database, so mutating commands (retry, delete, erase, add) are covered too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mtaserver.cli import build_parser
from mtaserver.dkim import keys as K
from mtaserver.dkim.records import quote_txt
from mtaserver.storage.sqlite.backup import backup_sync
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.tokens import TokenStore
from tests.support.admin import AdminClient, operations
from tests.support.daemon import ROOT, Daemon, TestConfig, free_port
from tests.support.dbstates import STATES, WEBHOOK, Facts, build
from tests.support.dnsserver import DnsServer

pytestmark = pytest.mark.sqlite_only(
    "builds each database state in the SQLite file (tests/support/dbstates.py)"
)

MISSING_QID = "0000000000000000"  # well formed, never issued
BOUNCE = ROOT / "tests" / "data" / "bounces" / "flufl" / "bounce_01.txt"
PASSWORD = "correct horse battery\n"
TEXT_PART = ROOT / "tests" / "data" / "templates" / "promo.txt"
CONTACTS_CSV = ROOT / "tests" / "data" / "contacts" / "import.csv"  # one bad line: exit 1


@dataclass(frozen=True)
class Case:
    """One command line. ``{name}`` in ``args`` is a ``Facts`` field of the state (a queue id,
    a user); where the state has none, ``ABSENT[name]`` stands in and ``if_absent`` is the exit
    status expected instead of ``expect``. ``{tmp}`` is a fresh directory of the case's own.
    ``states``: where it runs. Every state, unless the command fails before it reads the
    database or does not read it at all (``ONCE``), or the empty and final states already run
    the same path through an absent ``{name}`` (``BUSY``)."""

    command: tuple[str, ...]
    args: tuple[str, ...] = ()
    expect: int = 0
    if_absent: int | None = None
    stdin: str | None = None
    states: tuple[str, ...] = STATES


ONCE = ("empty",)
BUSY = ("busy",)
# The final state has no queued mail, users or tokens: there {queued}/{user}/{token} run the
# empty state's path. Likewise the empty state has no final mail: {final} runs the path of
# an unknown id, as in ``BUSY`` cases that name MISSING_QID.
NO_FINAL = ("empty", "busy")
NO_EMPTY = ("final", "busy")
ABSENT = {
    "queued": MISSING_QID,
    "final": MISSING_QID,
    "user": "nobody@example.com",
    "token": "ops",
    "suppressed": "nobody@nowhere.test",
    "recipient": "nobody@nowhere.test",
    "apikey": "no-such-key",
    "template": "no-such-template",
    "contact": "nobody@nowhere.test",
}


def C(*words: str, **kw: Any) -> Case:
    """``C("queue show", "{queued}", expect=0, if_absent=2)``."""
    return Case(tuple(words[0].split()), tuple(words[1:]), **kw)


CASES: list[Case] = [
    # -- admin tokens
    C("admin token list"),
    C("admin token create", "--name", "cli-states", states=NO_FINAL),
    C("admin token create", "--name", "not valid!", expect=2, states=ONCE),
    C("admin token revoke", "{token}", if_absent=2, states=NO_FINAL),
    C("admin token revoke", "nobody", expect=2, states=BUSY),
    # -- API keys
    C("apikey list"),
    C("apikey create", "--user", "{user}", "--scopes", "mail.send,mail.batch", if_absent=2,
      states=NO_FINAL),
    C("apikey create", "--user", "{user}", "--scopes", "mail.fly", expect=2, states=BUSY),
    C("apikey create", "--user", "nobody", expect=2, states=ONCE),
    C("apikey revoke", "{apikey}", if_absent=2),
    # -- templates
    C("template list"),
    C("template put", "promo", "--subject", "Hi {{name}}", "--text", str(TEXT_PART)),
    C("template put", "promo", "--text", "{tmp}/missing.txt", expect=2, states=ONCE),
    C("template put", "bad name!", "--text", str(TEXT_PART), expect=2, states=ONCE),
    C("template show", "{template}", if_absent=2),
    C("template show", "{template}", "--version", "1", if_absent=2, states=BUSY),
    C("template show", "{template}", "--version", "9", expect=2, states=BUSY),
    C("template activate", "{template}", "1", if_absent=2),
    C("template activate", "{template}", "9", expect=2, states=BUSY),
    C("template delete", "{template}", if_absent=2),
    # -- contacts
    C("contacts import", str(CONTACTS_CSV), "--user", "{user}", expect=1, if_absent=2),
    C("contacts import", str(CONTACTS_CSV), "--user", "{user}", "--list", "news", expect=1,
      if_absent=2, states=BUSY),
    C("contacts import", "{tmp}/missing.csv", "--user", "{user}", expect=2, states=ONCE),
    C("contacts export", "--user", "{user}", if_absent=2),
    C("contacts export", "--user", "{user}", "--format", "jsonl", if_absent=2, states=BUSY),
    C("contacts show", "{contact}", "--user", "{user}", if_absent=2),
    C("contacts show", "nobody@nowhere.test", "--user", "{user}", expect=2, states=BUSY),
    C("contacts show", "not-an-address", "--user", "{user}", expect=2, states=ONCE),
    C("contacts delete", "{contact}", "--user", "{user}", if_absent=2),
    C("contacts delete", "nobody@nowhere.test", "--user", "{user}", expect=2, states=BUSY),
    # -- triggers and events ({contact} is {user}'s)
    C("triggers list", "--user", "{user}", if_absent=2),
    C("triggers put", "signup", '{"event":"signup","steps":[{"wait":"1h","template":"{template}"}]'
      ',"from":"hello@example.com"}', "--user", "{user}", if_absent=2),
    C("triggers put", "bad", '{"event":"signup","steps":[{"wait":"soon","template":"x"}],'
      '"from":"a@b.test"}', "--user", "{user}", expect=2, states=ONCE),
    C("triggers put", "bad", "@{tmp}/missing.json", "--user", "{user}", expect=2, states=ONCE),
    C("triggers show", "nosuch", "--user", "{user}", expect=2, states=BUSY),
    C("triggers delete", "nosuch", "--user", "{user}", expect=2, states=BUSY),
    C("events send", "--contact", "{contact}", "--event", "signup", "--properties",
      '{"plan":"pro"}', "--user", "{user}", if_absent=2),
    C("events send", "--contact", "nobody@nowhere.test", "--event", "signup", "--user", "{user}",
      expect=2, states=BUSY),
    # -- segments
    C("segments list", "--user", "{user}", if_absent=2),
    C("segments save", "subs", "--filter", '{"and":[{"in_list":"news"},{"consent":"subscribed"}]}',
      "--user", "{user}", if_absent=2),
    C("segments save", "bad", "--filter", '{"attr":"x\') OR 1=1 --","eq":1}', "--user", "{user}",
      expect=2, states=ONCE),
    C("segments save", "bad", "--filter", "@{tmp}/missing.json", "--user", "{user}", expect=2,
      states=ONCE),
    C("segments count", "--filter", '{"opened":{"days":30}}', "--user", "{user}", if_absent=2),
    C("segments count", "--filter", '{"in_list":"nope"}', "--user", "{user}", expect=2,
      states=BUSY),
    C("segments count", "nosuch", "--user", "{user}", expect=2, states=BUSY),
    C("segments show", "nosuch", "--user", "{user}", expect=2, states=BUSY),
    C("segments delete", "nosuch", "--user", "{user}", expect=2, states=BUSY),
    # -- campaigns ("news" is the busy state's list)
    C("campaigns list", "--user", "{user}", if_absent=2),
    C("campaigns create", "spring-cli", "--template", "{template}", "--from", "news@example.com",
      "--list", "news", "--user", "{user}", states=BUSY),
    C("campaigns create", "c1", "--template", "{template}", "--from", "news@example.com",
      "--list", "nope", "--user", "{user}", expect=2, states=BUSY),
    C("campaigns create", "c1", "--template", "promo", "--from", "news@example.com",
      "--list", "news", "--cron", "61 * * * *", "--user", "{user}", expect=2, states=ONCE),
    C("campaigns show", "nosuch", "--user", "{user}", expect=2, if_absent=2),
    C("campaigns start", "nosuch", "--user", "{user}", expect=2, if_absent=2, states=BUSY),
    C("campaigns pause", "nosuch", "--user", "{user}", expect=2, if_absent=2, states=BUSY),
    C("campaigns resume", "nosuch", "--user", "{user}", expect=2, if_absent=2, states=BUSY),
    C("campaigns cancel", "nosuch", "--user", "{user}", expect=2, if_absent=2, states=BUSY),
    # -- backup, dev-setup
    C("backup", "{tmp}/backup.db"),
    C("backup", "{tmp}/no/such/dir/backup.db", expect=2, states=ONCE),
    C("dev-setup", states=NO_FINAL),
    # -- privacy
    C("privacy export", "{recipient}"),
    C("privacy export", "{recipient}", "--no-bodies", states=BUSY),
    C("privacy export", "not-an-address", expect=2, states=ONCE),
    C("privacy erase", "{recipient}"),
    C("privacy erase", "{suppressed}", "--suppress", states=NO_EMPTY),
    # -- queue
    C("queue summary"),
    C("queue summary", "--top", "1"),
    C("queue summary", "--top", "0"),
    C("queue list"),
    C("queue list", "--state", "delivered"),
    C("queue list", "--state", "leased", states=BUSY),
    C("queue list", "--domain", "two.test", "--limit", "1", states=NO_EMPTY),
    C("queue list", "--limit", "0"),
    C("queue show", "{queued}", if_absent=2, states=NO_FINAL),
    C("queue show", "{final}", if_absent=2, states=NO_EMPTY),
    C("queue show", MISSING_QID, expect=2, states=BUSY),
    C("queue retry", "--all"),
    C("queue retry", "{queued}", if_absent=2, states=NO_FINAL),
    C("queue retry", "{final}", if_absent=2, states=NO_EMPTY),
    C("queue retry", MISSING_QID, expect=2, states=BUSY),
    C("queue hold", "{queued}", if_absent=2, states=NO_FINAL),
    C("queue hold", MISSING_QID, expect=2, states=BUSY),
    C("queue release", "{queued}", if_absent=2, states=NO_FINAL),
    C("queue release", MISSING_QID, expect=2, states=BUSY),
    C("queue delete", "{final}", if_absent=2, states=NO_EMPTY),
    C("queue delete", "{queued}", if_absent=2, states=NO_FINAL),
    C("queue delete", MISSING_QID, expect=2, states=BUSY),
    # -- stats
    C("stats"),
    C("stats", "--json", "--since", "24h", "--campaign", "spring", "--user", "alice@example.com"),
    C("stats", "--since", "2020-01-01", states=BUSY),
    C("stats", "--since", "last tuesday", expect=2, states=ONCE),
    C("stats", "--campaign", "nosuch", "--user", "{user}"),  # no stored campaign: the tag
    C("stats", "--json", "--trigger", "nosuch", "--user", "{user}", expect=2),
    C("stats", "--trigger", "welcome", expect=2, states=ONCE),  # whose? --user is needed
    # -- suppressions (check exits 1 when the address is suppressed)
    C("suppression list"),
    C("suppression list", "--all", "--limit", "1", states=NO_EMPTY),
    C("suppression list", "{suppressed}"),
    C("suppression add", "x@y.test", "--scope", "example.com", "--for", "30d", states=NO_FINAL),
    C("suppression add", "not-an-address", expect=2, states=ONCE),
    C("suppression add", "x@y.test", "--for", "forever", expect=2, states=ONCE),
    C("suppression remove", "{suppressed}"),
    C("suppression remove", "fan@two.test", "--scope", "example.com", states=NO_EMPTY),
    C("suppression check", "{suppressed}", expect=1, if_absent=0),
    C("suppression check", "fan@two.test", "--sender-domain", "example.net", states=NO_EMPTY),
    C("suppression check", "not-an-address", expect=2, states=ONCE),
    # review exits 1 while entries made for a non-dead reason are left in place
    C("suppression review"),
    C("suppression review", "--reason", "spamdetected", "--lift"),
    C("suppression review", "--lift", "--dry-run"),
    C("suppression review", "--reason", "spam", expect=2, states=ONCE),
    # -- users
    C("user list"),
    C("user add", "carol@example.com", "--domain", "example.com", "--password-stdin",
      stdin=PASSWORD, states=NO_FINAL),
    C("user add", "{user}", "--domain", "example.com", "--password-stdin", expect=2,
      if_absent=0, stdin=PASSWORD, states=NO_FINAL),
    C("user add", "dave", "--domain", "example.com", "--password-stdin", expect=2,
      stdin="short\n", states=ONCE),
    C("user passwd", "{user}", "--password-stdin", if_absent=2, stdin=PASSWORD, states=NO_FINAL),
    C("user remove", "{user}", if_absent=2, states=NO_FINAL),
    C("user remove", "nobody", expect=2, states=BUSY),
    # -- webhooks
    C("webhooks status"),
    C("webhooks retry-failed"),
    C("webhooks retry-failed", WEBHOOK, states=BUSY),
    C("webhooks keygen", "{tmp}/sg.pem", states=ONCE),
    C("webhooks public-key", "{tmp}/missing.pem", expect=2, states=ONCE),
    # -- no database
    C("check-config", states=ONCE),
    C("dkim keygen", "--domain", "example.org", "--selector", "s2", "--algorithm", "ed25519",
      "--out", "{tmp}/s2.pem", states=ONCE),
    C("dkim keygen", "--domain", "example.org", "--selector", "s2", "--bits", "1024",
      "--out", "{tmp}/weak.pem", expect=2, states=ONCE),
    C("dkim show", states=ONCE),
    C("dkim check", "--domain", "example.com", states=ONCE),
    C("dkim check", "--domain", "unconfigured.test", expect=2, states=ONCE),
    C("dns records", states=ONCE),
    C("dns records", "--domain", "example.com", states=ONCE),
    C("dns check", "--domain", "example.com", expect=1, states=ONCE),  # SPF etc. unpublished
    C("dsn parse", str(BOUNCE), states=ONCE),
    C("dsn parse", "{tmp}/missing.eml", expect=2, states=ONCE),
    C("storage keygen", "{tmp}/keys", states=ONCE),
    C("cluster status", expect=2, states=ONCE),  # no [cluster]: tests/test_cluster_shaping.py runs it on nodes
]  # fmt: skip

# Leaf commands not run from CASES, and where they are covered instead.
ELSEWHERE = {
    ("serve",): "test_admin_reads_on_every_state runs the daemon on each state",
    ("storage", "migrate"): "tests/test_pg_migrate.py copies each state into a private PostgreSQL",
}


def leaf_parsers(
    parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix, parser
        return
    for action in subs:
        for name, child in action.choices.items():
            yield from leaf_parsers(child, (*prefix, name))


LEAVES = dict(leaf_parsers(build_parser()))


def takes_config(command: tuple[str, ...]) -> bool:
    return any("-c" in a.option_strings for a in LEAVES[command]._actions)


def test_every_subcommand_has_cases() -> None:
    covered = {c.command for c in CASES} | set(ELSEWHERE)
    assert not set(LEAVES) - covered, f"subcommands without a case: {sorted(set(LEAVES) - covered)}"
    assert not covered - set(LEAVES), f"cases for unknown commands: {sorted(covered - set(LEAVES))}"
    for case in CASES:  # every case parses: a typo in the table is not a passing "exit 2"
        argv = [*case.command, *case.args] + (["-c", "x"] if takes_config(case.command) else [])
        build_parser().parse_args(argv)


# -- fixtures -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class World:
    """What every case's config points at: a DKIM key and a DNS server publishing it."""

    dkim_key: Path
    nameserver: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    path = tmp_path_factory.mktemp("dkim") / "s1.example.com.pem"
    key = K.generate_key(K.Algorithm.ED25519)
    K.write_private_key(path, key)
    text = K.txt_record_text(K.Algorithm.ED25519, K.public_b64(key))
    with DnsServer() as server:
        server.set("s1._domainkey.example.com", "TXT", [quote_txt(text)])
        yield World(path, server.nameserver)


@pytest.fixture(scope="module")
def states(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Facts]]:
    """Each state built once per worker; every case copies it."""
    out = {}
    for state in STATES:
        path = tmp_path_factory.mktemp(f"state-{state}") / "mtaserver.db"
        out[state] = (path, build(state, path))
    return out


def make_config(tmp_path: Path, world: World) -> TestConfig:
    """A config like an operator's: admin API, a DKIM key, a webhook; mail made due goes to
    a port nobody listens on (deferred), DNS only from the test's server."""
    cfg = TestConfig(tmp_path, tls=False)
    cfg.set("admin", listen=f"127.0.0.1:{free_port()}")
    cfg.set("delivery", relay_host=f"127.0.0.1:{free_port()}", nameservers=[world.nameserver])
    cfg.data["dkim"] = [
        {"domain": "example.com", "selector": "s1", "key": str(world.dkim_key),
         "algorithm": "ed25519-sha256"},
    ]  # fmt: skip
    cfg.data["webhooks"] = [
        {
            "name": WEBHOOK,
            "url": f"http://127.0.0.1:{free_port()}/hook",
            "secret": "a-webhook-secret-of-32-characters",
        }
    ]
    cfg.write()
    return cfg


def with_state(tmp_path: Path, world: World, db: Path) -> TestConfig:
    cfg = make_config(tmp_path, world)
    cfg.database.parent.mkdir(parents=True, exist_ok=True)
    backup_sync(db, cfg.database)
    return cfg


# -- CLI ------------------------------------------------------------------------------------------
def _case_id(case: Case) -> str:
    return " ".join((*case.command, *case.args)).replace("{", "").replace("}", "")


PARAMS = [
    pytest.param(state, case, id=f"{state}:{_case_id(case)}")
    for case in CASES
    for state in case.states
]


def _fill(text: str, facts: Facts) -> tuple[str, bool]:
    """``text`` with each ``{name}`` filled from ``facts`` (or ``ABSENT``); and whether any
    was absent."""
    absent = False
    for name, stand_in in ABSENT.items():
        if "{" + name + "}" in text:
            value = getattr(facts, name)
            absent |= value is None
            text = text.replace("{" + name + "}", stand_in if value is None else value)
    return text, absent


def resolve(case: Case, facts: Facts, tmp: Path) -> tuple[list[str], int]:
    args, absent = [], False
    for arg in case.args:
        filled, a = _fill(arg, facts)
        absent |= a
        args.append(filled.replace("{tmp}", str(tmp)))
    expect = case.if_absent if absent and case.if_absent is not None else case.expect
    return args, expect


def run_cli(argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MTASERVER_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "mtaserver", *argv],
        input=stdin, capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
    )  # fmt: skip


def check_outcome(what: str, r: subprocess.CompletedProcess[str], expect: int) -> None:
    report = f"{what}: exit {r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert "Traceback" not in r.stdout + r.stderr, report
    assert r.returncode == expect, report
    if expect == 2:
        lines = r.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("mtaserver: "), report


@pytest.mark.parametrize(("state", "case"), PARAMS)
def test_command_on_state(
    state: str,
    case: Case,
    tmp_path: Path,
    world: World,
    states: dict[str, tuple[Path, Facts]],
) -> None:
    db, facts = states[state]
    cfg = with_state(tmp_path, world, db)
    work = tmp_path / "work"
    work.mkdir()
    args, expect = resolve(case, facts, work)
    argv = [*case.command, *args]
    if takes_config(case.command):
        argv += ["-c", str(cfg.path)]
    check_outcome(" ".join(argv), run_cli(argv, case.stdin), expect)


@pytest.mark.parametrize("command", [("queue", "summary"), ("user", "list"), ("check-config",)])
def test_unreadable_config_is_one_line(command: tuple[str, ...], tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    for path in (tmp_path / "missing.toml", bad):
        r = run_cli([*command, "-c", str(path)])
        check_outcome(f"{command} -c {path.name}", r, 2)


# -- admin API ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Call:
    """One admin API request; ``{name}`` as in ``Case``; where absent, ``if_absent`` applies."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...] = ()
    expect: int = 200
    if_absent: int | None = None


def R(path: str, *query: tuple[str, str], **kw: Any) -> Call:
    return Call("GET", path, tuple(query), **kw)


API = "/api/v1"
CALLS: list[Call] = [
    R("/metrics"),
    R(f"{API}/openapi.json"),
    R(f"{API}/queue/summary"),
    R(f"{API}/queue/summary", ("top", "1")),
    R(f"{API}/queue"),
    R(f"{API}/queue", ("state", "delivered")),
    R(f"{API}/queue", ("state", "leased")),
    R(f"{API}/queue", ("domain", "two.test"), ("limit", "1")),
    R(f"{API}/queue", ("after", f"{MISSING_QID}:0")),
    R(f"{API}/queue/{{queued}}", if_absent=404),
    R(f"{API}/queue/{{final}}", if_absent=404),
    R(f"{API}/queue/{MISSING_QID}", expect=404),
    R(f"{API}/events"),
    R(f"{API}/events", ("type", "open,click"), ("limit", "5")),
    R(f"{API}/events", ("queue_id", "{final}")),
    R(f"{API}/events", ("after", "1000000")),
    R(f"{API}/stats"),
    R(f"{API}/stats", ("since", "24h"), ("campaign", "spring"), ("user", "alice@example.com")),
    R(f"{API}/campaigns/nosuch/stats", ("user", "{user}"), expect=404),
    R(f"{API}/campaigns/nosuch/stats", expect=400),  # whose? names are per user
    R(f"{API}/triggers/nosuch/stats", ("user", "{user}"), ("since", "7d"), expect=404),
    R(f"{API}/triggers/nosuch/stats", ("user", "{user}"), ("since", "soon"), expect=400),
    R(f"{API}/dkim/keys"),
    R(f"{API}/dns/records"),
    R(f"{API}/dns/records", ("domain", "example.com")),
    R(f"{API}/suppressions"),
    R(f"{API}/suppressions", ("include_expired", "true"), ("limit", "1")),
    R(f"{API}/suppressions", ("address", "{suppressed}")),
    R(f"{API}/suppressions/check", ("address", "{suppressed}")),
    R(f"{API}/suppressions/check", ("address", "fan@two.test"), ("sender_domain", "example.com")),
    R(f"{API}/privacy/export", ("address", "{recipient}")),
    R(f"{API}/privacy/export", ("address", "{recipient}"), ("bodies", "false")),
    R(f"{API}/users"),
    R(f"{API}/templates"),
    R(f"{API}/templates/{{template}}", if_absent=404),
    R(f"{API}/templates/no-such-template", expect=404),
    R(f"{API}/cluster"),  # no [cluster]: this node alone, nothing to ask Redis
    # writes that name nothing: 404, not 500
    Call("POST", f"{API}/queue/{MISSING_QID}/retry", expect=404),
    Call("POST", f"{API}/queue/{MISSING_QID}/hold", expect=404),
    Call("POST", f"{API}/queue/{MISSING_QID}/release", expect=404),
    Call("DELETE", f"{API}/queue/{MISSING_QID}", expect=404),
    Call("DELETE", f"{API}/suppressions/nobody@nowhere.test", expect=404),
    Call("DELETE", f"{API}/users/nobody", expect=404),
    Call("POST", f"{API}/queue/retry"),
]


def _token(db_path: Path) -> str:
    async def run() -> str:
        db = Database(db_path)
        await db.open()
        try:
            return (await TokenStore(db).create("cli-states"))[1]
        finally:
            await db.close()

    return asyncio.run(run())


@pytest.mark.parametrize("state", STATES)
def test_admin_reads_on_every_state(
    state: str, tmp_path: Path, world: World, states: dict[str, tuple[Path, Facts]]
) -> None:
    db, facts = states[state]
    cfg = with_state(tmp_path, world, db)
    token = _token(cfg.database)
    host, port = cfg.address("admin", "listen")
    api = AdminClient(f"http://{host}:{port}", token)
    failures = []
    with Daemon(cfg) as d:
        for call in CALLS:
            path, absent_p = _fill(call.path, facts)
            query = {}
            absent = absent_p
            for k, v in call.query:
                query[k], a = _fill(v, facts)
                absent |= a
            expect = call.if_absent if absent and call.if_absent is not None else call.expect
            what = f"{call.method} {path} {query}"
            try:
                r = api.request(call.method, path, query=query or None)
            except Exception as exc:  # a response the document does not allow
                failures.append(f"{what}: {type(exc).__name__}: {exc}")
                continue
            if r.status != expect:
                failures.append(f"{what}: {r.status} (expected {expect}) {r.text[:300]}")
        log = d.log()
    assert "Traceback" not in log, log
    assert not failures, "\n".join(failures)
    gets = {op for op in operations() if op[0] == "GET"}
    assert not gets - api.covered, f"GET endpoints not read: {sorted(gets - api.covered)}"
