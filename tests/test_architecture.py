"""The house rules of ARCHITECTURE.md, checked on the real import graph and the real SQL.

Rule 2: dependencies point inward — model/errors/clock ← config ← pure policy ← I/O stages ←
app/cli/admin — and there is no cycle between top-level packages. Storage: SQL that names a
table appears only in the module that owns it.

Where today's tree still breaks a rule, the edge is listed in ``KNOWN`` / ``KNOWN_SQL`` with
the issue that removes it. The lists are a ratchet: a new violation fails, and so does an
entry that no longer occurs (delete it), so they can only shrink.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "mtaserver"

# Layer of each top-level module or package of ``mtaserver`` (lower = further inside).
LAYERS: dict[str, int] = {
    # 0: the values and primitives everything shares
    **dict.fromkeys(["model", "errors", "clock", "log", "mtaserver"], 0),
    # 1: configuration, parsed once into frozen values
    "config": 1,
    # 2: pure policy and pure transformations (no I/O of their own)
    **dict.fromkeys(
        [
            "classify",
            "retry",
            "shaper",
            "verp",
            "bouncegen",
            "prepare",
            "pipeline",
            "dkim",
            "crypto",
            "outcome",
            "notices",
            "dsn",
            "ratelimit",
            "render",
            "sendapi",
            "keyfiles",
            "contacts",
            "segments",
            "journeys",
            "cron",
            "campaigns",
        ],
        2,
    ),
    # 3: I/O — storage, network stages, operations
    **dict.fromkeys(
        [
            "storage",
            "suppression",
            "auth",
            "mx",
            "delivery",
            "inbound",
            "submission",
            "tracking",
            "webhooks",
            "retention",
            "privacy",
            "metrics",
            "scheduler",
            "diskspace",
            "supervisor",
            "notify",
            "devsetup",
            "dnsrecords",
            "smtpd",
            "api",
            "oauth",
            "outreach",
            "cluster",
        ],
        3,
    ),
    # 4: composition roots and operator front ends
    **dict.fromkeys(["app", "admin", "cli", "__main__", "workers"], 4),
}

# I/O modules other stages may use: the database and the storage owners on top of it.
STORAGE = {"storage", "suppression", "auth", "diskspace", "log", "supervisor", "smtpd"}

# Edges that break a rule today, each with what removes it (issue 13).
KNOWN: dict[tuple[str, str], str] = {}


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> set[str]:
    """Every ``mtaserver…`` module ``path`` imports, at any depth (lazy imports count)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.add(node.module)
    return {m for m in found if m == "mtaserver" or m.startswith("mtaserver.")}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "mtaserver"


def package_edges() -> dict[tuple[str, str], list[str]]:
    """(importer, imported) top-level pairs → the files that make the edge."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(ROOT.rglob("*.py")):
        src = _top(_module_name(path))
        for target in _imports(path):
            dst = _top(target)
            if dst != src:
                edges[(src, dst)].append(str(path.relative_to(ROOT.parent)))
    return edges


def violations(edges: dict[tuple[str, str], list[str]]) -> dict[tuple[str, str], str]:
    """Edges that break rule 2: upward, or sideways between I/O stages other than storage."""
    bad = {}
    for (src, dst), files in edges.items():
        a, b = LAYERS[src], LAYERS[dst]
        if b > a:
            bad[(src, dst)] = f"upward {a}→{b} in {files}"
        elif a == b == 3 and dst not in STORAGE:
            bad[(src, dst)] = f"stage→stage in {files}"
    return bad


def find_cycle(edges: set[tuple[str, str]]) -> list[str] | None:
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_every_module_has_a_layer() -> None:
    tops = {_top(_module_name(p)) for p in ROOT.rglob("*.py")}
    assert not tops - set(LAYERS), f"add to LAYERS: {sorted(tops - set(LAYERS))}"
    assert not set(LAYERS) - tops, f"gone, remove from LAYERS: {sorted(set(LAYERS) - tops)}"


def test_no_package_cycles() -> None:
    edges = package_edges()
    cycle = find_cycle(set(edges))
    assert cycle is None, (
        " → ".join(cycle or [])
        + f"  ({[edges[e] for e in zip(cycle or [], (cycle or [])[1:], strict=False)]})"
    )


def test_foundation_imports_nothing_above_it() -> None:
    for path in ROOT.glob("*.py"):
        name = _top(_module_name(path))
        if LAYERS.get(name) == 0 and name != "mtaserver":
            above = {m for m in _imports(path) if LAYERS[_top(m)] > 0}
            assert not above, f"{path.name} imports {sorted(above)}"


def test_dependencies_point_inward() -> None:
    found = violations(package_edges())
    new = {e: why for e, why in found.items() if e not in KNOWN}
    stale = set(KNOWN) - set(found)
    assert not new, "rule 2 broken:\n" + "\n".join(f"{a} → {b}: {w}" for (a, b), w in new.items())
    assert not stale, f"no longer happens, delete from KNOWN: {sorted(stale)}"


# -- SQL ownership ----------------------------------------------------------------------------
BACKEND = "storage.sqlite"  # the only package whose strings may be SQL on our tables
PG_BACKEND = "storage.postgres"  # the second backend: same owners, storage.postgres.* names
OWNERS = {
    "messages": "storage.sqlite.queue",
    "recipients": "storage.sqlite.queue",
    "batches": "storage.sqlite.queue",
    "events": "storage.sqlite.events",
    "suppressions": "storage.sqlite.suppressions",
    "soft_bounces": "storage.sqlite.suppressions",
    "users": "storage.sqlite.users",
    "user_domains": "storage.sqlite.users",
    "webhook_outbox": "storage.sqlite.outbox",
    "webhook_endpoints": "storage.sqlite.outbox",
    "admin_tokens": "storage.sqlite.tokens",
    "api_keys": "storage.sqlite.apikeys",
    "templates": "storage.sqlite.templates",
    "template_versions": "storage.sqlite.templates",
    "idempotency": "storage.sqlite.idempotency",
    "contacts": "storage.sqlite.contacts",
    "lists": "storage.sqlite.contacts",
    "list_members": "storage.sqlite.contacts",
    "campaigns": "storage.sqlite.campaigns",
    "campaign_runs": "storage.sqlite.campaigns",
    "campaign_recipients": "storage.sqlite.campaigns",
    "optin_settings": "storage.sqlite.optin",
    "optin_sent": "storage.sqlite.optin",
    "consent_proofs": "storage.sqlite.privacy",
    "privacy_keys": "storage.sqlite.privacy",
    "segments": "storage.sqlite.segments",
    "triggers": "storage.sqlite.journeys",
    "contact_events": "storage.sqlite.journeys",
    "journey_steps": "storage.sqlite.journeys",
    "meta": "storage.sqlite.db",
}
# Modules outside the backend that still run SQL on a table (issue 13, item 1).
KNOWN_SQL: set[tuple[str, str]] = set()
# Modules inside the backend that write a table they do not own.
KNOWN_WRITES: set[tuple[str, str]] = set()
_SQL = r"\b(?:FROM|INTO|UPDATE|JOIN|TABLE(?: IF NOT EXISTS)?|ON)\s+{table}\b"
_WRITE = r"\b(?:INSERT(?: OR \w+)? INTO|REPLACE INTO|UPDATE|DELETE FROM|(?:CREATE|ALTER|DROP) TABLE(?: IF (?:NOT )?EXISTS)?)\s+{table}\b"


def sql_users(pattern: str = _SQL) -> set[tuple[str, str]]:
    """(table, module) for every module whose string literals match ``pattern`` on a table."""
    out = set()
    for path in ROOT.rglob("*.py"):
        module = _module_name(path).removeprefix("mtaserver.")
        strings = [
            n.value
            for n in ast.walk(ast.parse(path.read_text()))
            if isinstance(n, ast.Constant) and isinstance(n.value, str)
        ]
        text = "\n".join(strings)
        for table in OWNERS:
            if re.search(pattern.format(table=table), text):
                out.add((table, module))
    return out


def _inside(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_sql_on_tables_only_in_the_backend() -> None:
    found = {(t, m) for t, m in sql_users() if not (_inside(m, BACKEND) or _inside(m, PG_BACKEND))}
    new = found - KNOWN_SQL
    stale = KNOWN_SQL - found
    assert not new, f"SQL outside the storage backend: {sorted(new)}"
    assert not stale, f"no longer happens, delete from KNOWN_SQL: {sorted(stale)}"


def _pg_owner(owner: str) -> str:
    """The PostgreSQL owner of a table: the same module path under ``storage.postgres``."""
    return PG_BACKEND + owner.removeprefix(BACKEND)


def test_each_table_written_only_by_its_owner() -> None:
    found = {
        (t, m) for t, m in sql_users(_WRITE) if _inside(m, BACKEND) and not _inside(m, OWNERS[t])
    } | {
        (t, m)
        for t, m in sql_users(_WRITE)
        if _inside(m, PG_BACKEND) and not _inside(m, _pg_owner(OWNERS[t]))
    }
    new = found - KNOWN_WRITES
    stale = KNOWN_WRITES - found
    assert not new, f"table written outside its owner: {sorted(new)}"
    assert not stale, f"no longer happens, delete from KNOWN_WRITES: {sorted(stale)}"


def test_owners_exist() -> None:
    for table, owner in OWNERS.items():
        path = ROOT / owner.replace(".", "/")
        assert path.with_suffix(".py").exists() or (path / "__init__.py").exists(), (
            f"{table}: owner {owner} has no module {path}"
        )


def test_the_checks_can_fail() -> None:
    """The graph walk sees the edges it must: the cycle removed in issue 13 would be found."""
    assert find_cycle({("cli", "admin"), ("admin", "cli")}) is not None
    assert violations({("model", "storage"): ["x"]}) and violations(
        {("inbound", "tracking"): ["x"]}
    )
    write = re.compile(_WRITE.format(table="events"))
    assert write.search("DELETE FROM events WHERE id=?") and write.search("UPDATE events SET")
    assert not write.search("SELECT id FROM events") and not write.search("AFTER INSERT ON events")


# -- one clock ------------------------------------------------------------------------------
_WALL = re.compile(
    r"\btime\.(?:time|monotonic|perf_counter)\b|\bdatetime\.now\b|\basyncio\.sleep\((?!0\))"
)


def test_time_is_read_and_slept_only_through_the_clock() -> None:
    """Rule: every time read and sleep goes through the injected ``Clock`` (``clock.py`` is
    the one implementation). ``loop.time()`` stays allowed: it is the event loop's own timer
    domain, which asyncio's timeouts and ``call_at`` are measured in."""
    found = []
    for path in ROOT.rglob("*.py"):
        if path.name == "clock.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _WALL.search(code):
                found.append(f"{path.relative_to(ROOT.parent)}:{n}: {line.strip()}")
    assert not found, "read the injected clock instead:\n" + "\n".join(found)
    assert _WALL.search("await asyncio.sleep(5)") and not _WALL.search("asyncio.sleep(0)")
