"""Run mtaserver as a real process for end-to-end tests.

    cfg = TestConfig(tmp_path)                       # free loopback ports, trustme TLS
    cfg.set("delivery", nameservers=[dns.nameserver])
    with Daemon(cfg) as d:                           # waits for READY=1 on a notify socket
        ... talk to cfg.port("submission") ...
        d.reload()                                   # SIGHUP, waits for READY=1 again
    # leaving the block sends SIGTERM and waits for exit 0

``Daemon.kill()`` sends SIGKILL (crash tests). ``d.log()`` returns stderr so far.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import trustme

from tests.support import pgsuite
from tests.support.ports import free_port

ROOT = Path(__file__).resolve().parents[2]


def database_bytes(path: Path) -> bytes:
    """The raw bytes of a SQLite file and its WAL, for tests that scan what is stored."""
    out = b""
    for p in (path, path.with_name(path.name + "-wal")):
        if p.exists():
            out += p.read_bytes()
    return out


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        s = str(v).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{s}"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def _key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else f'"{k}"'


def to_toml(data: dict[str, Any]) -> str:
    """A small TOML writer: scalars, lists, tables, nested tables, arrays of tables."""
    lines: list[str] = []

    def table(prefix: str, body: dict[str, Any]) -> None:
        scalars = {k: v for k, v in body.items() if not isinstance(v, dict) and not _is_aot(v)}
        if prefix:
            lines.append(f"[{prefix}]")
        lines.extend(f"{_key(k)} = {_toml_value(v)}" for k, v in scalars.items())
        lines.append("")
        for k, v in body.items():
            name = f"{prefix}.{_key(k)}" if prefix else _key(k)
            if isinstance(v, dict):
                table(name, v)
            elif _is_aot(v):
                for item in v:
                    lines.append(f"[[{name}]]")
                    lines.extend(f"{_key(ik)} = {_toml_value(iv)}" for ik, iv in item.items())
                    lines.append("")

    table("", data)
    return "\n".join(lines)


def _is_aot(v: Any) -> bool:
    return isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v)


class TestConfig:
    """A config file under tmp_path with free ports and a trustme certificate.

    With ``MTASERVER_TEST_BACKEND=postgresql`` its ``[storage]`` is a fresh database of its
    own on the worker's private PostgreSQL (``tests.support.pgsuite``); otherwise nothing
    about storage is written and the daemon uses its SQLite file under ``data_dir``.
    """

    __test__ = False  # not a pytest test class

    def __init__(self, tmp_path: Path, *, tls: bool = True) -> None:
        self.dir = tmp_path
        self.ca = trustme.CA()
        self.data: dict[str, Any] = {
            "server": {
                "hostname": "mta.test",
                "data_dir": str(tmp_path / "data"),
                "log_level": "debug",
                "drain_timeout": "10s",
            },
            "submission": {
                "listen_plain": f"127.0.0.1:{free_port()}",
                "trusted_networks": ["127.0.0.0/8"],
            },
            # Never the system resolver: a loopback port nobody answers on, unless a test
            # points this at its own DnsServer. A lookup nobody answers gives up in 3 s, not
            # the default 10 s: a stop drains in-flight deliveries, and those are mostly such
            # lookups here.
            "delivery": {"nameservers": [f"127.0.0.1:{free_port()}"], "dns_timeout": "3s"},
        }
        if tls:
            cert = self.ca.issue_cert("localhost", "127.0.0.1", "mta.test")
            cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
            cert.private_key_and_cert_chain_pem.write_to_path(str(cert_path))
            cert.private_key_pem.write_to_path(str(key_path))
            self.data["tls"] = {"cert": str(cert_path), "key": str(key_path)}
            self.data["submission"]["listen"] = f"127.0.0.1:{free_port()}"
            self.data["submission"]["listen_tls"] = f"127.0.0.1:{free_port()}"
        self.backend = pgsuite.backend()
        if self.backend == "postgresql":
            self.data["storage"] = pgsuite.current().storage(tmp_path)
        self.path = tmp_path / "mtaserver.toml"

    def set(self, section: str, **values: Any) -> TestConfig:
        """Set keys in a section; dotted sections like 'shaping.default' nest."""
        node = self.data
        for part in section.split("."):
            node = node.setdefault(part, {})
        node.update(values)
        return self

    def address(self, section: str, key: str) -> tuple[str, int]:
        host, _, port = str(self.data[section][key]).rpartition(":")
        return host, int(port)

    def write(self) -> Path:
        self.path.write_text(to_toml(self.data))
        return self.path

    @property
    def database(self) -> Path:
        if self.backend != "sqlite" and self.data["storage"].get("backend") == "postgresql":
            raise RuntimeError(
                "TestConfig.database is the SQLite file, and this daemon stores in PostgreSQL "
                f"({pgsuite.ENV}={self.backend}): mark the test "
                '@pytest.mark.sqlite_only("reads the SQLite file")'
            )
        return Path(self.data["server"]["data_dir"]) / "mtaserver.db"

    def stored_bytes(self) -> bytes:
        """Everything the daemon stored, as bytes to scan for what must never be stored:
        the SQLite file and its WAL, or a data-only ``pg_dump`` of its database."""
        storage = self.data.get("storage", {})
        if storage.get("backend") == "postgresql":
            password = Path(storage["password_file"]).read_text().strip()
            return pgsuite.dump(storage["dsn"], password)
        return database_bytes(self.database)

    def query(self, sql: str, *args: object) -> list[tuple[Any, ...]]:
        """Read (or write, as another process would) the daemon's database, either backend;
        SQLite-style ``?`` placeholders."""
        storage = self.data.get("storage", {})
        if storage.get("backend") == "postgresql":
            password = Path(storage["password_file"]).read_text().strip()
            return pgsuite.query(storage["dsn"], password, sql, args)
        # WAL: safe while the daemon runs; autocommit, so a test's INSERT is there at once
        conn = sqlite3.connect(self.database, isolation_level=None)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()


@dataclass(frozen=True)
class Stores:
    """The owners a daemon of ``config`` uses, opened in the test's process (either backend):
    for tests that seed or inspect what the daemon stores through the real owners."""

    spool: Any  # Spool | PgQueue
    events: Any  # EventLog | PgEventLog
    tokens: Any  # TokenStore | PgTokenStore
    templates: Any  # TemplateStore | PgTemplateStore
    users: Any  # UserStore | PgUserStore
    contacts: Any  # ContactStore | PgContactStore
    campaigns: Any  # CampaignStore | PgCampaignStore
    journeys: Any  # JourneyStore | PgJourneyStore
    suppressions: Any  # SuppressionStore | PgSuppressionStore


@contextlib.asynccontextmanager
async def open_stores(config: TestConfig) -> AsyncIterator[Stores]:
    storage = config.data.get("storage", {})
    if storage.get("backend") == "postgresql":
        from mtaserver.config.storage import PostgresConfig
        from mtaserver.storage.postgres.campaigns import PgCampaignStore
        from mtaserver.storage.postgres.contacts import PgContactStore
        from mtaserver.storage.postgres.db import PgDatabase
        from mtaserver.storage.postgres.events import PgEventLog
        from mtaserver.storage.postgres.journeys import PgJourneyStore
        from mtaserver.storage.postgres.queue import PgQueue
        from mtaserver.storage.postgres.suppressions import PgSuppressionStore
        from mtaserver.storage.postgres.templates import PgTemplateStore
        from mtaserver.storage.postgres.tokens import PgTokenStore
        from mtaserver.storage.postgres.users import PgUserStore

        pg = PgDatabase(
            PostgresConfig(
                dsn=storage["dsn"], password_file=Path(storage["password_file"]), tls="disable",
                pool_size=2,
            )
        )  # fmt: skip
        await pg.open()
        try:
            yield Stores(
                PgQueue(pg, "test"), PgEventLog(pg), PgTokenStore(pg), PgTemplateStore(pg),
                users=PgUserStore(pg), contacts=PgContactStore(pg), campaigns=PgCampaignStore(pg),
                journeys=PgJourneyStore(pg), suppressions=PgSuppressionStore(pg),
            )  # fmt: skip
        finally:
            await pg.close()
        return
    from mtaserver.storage.sqlite.campaigns import CampaignStore
    from mtaserver.storage.sqlite.contacts import ContactStore
    from mtaserver.storage.sqlite.db import Database
    from mtaserver.storage.sqlite.events import EventLog
    from mtaserver.storage.sqlite.journeys import JourneyStore
    from mtaserver.storage.sqlite.queue import Spool
    from mtaserver.storage.sqlite.suppressions import SuppressionStore
    from mtaserver.storage.sqlite.templates import TemplateStore
    from mtaserver.storage.sqlite.tokens import TokenStore
    from mtaserver.storage.sqlite.users import UserStore

    db = Database(config.database)
    await db.open()
    try:
        yield Stores(
            Spool(db), EventLog(db), TokenStore(db), TemplateStore(db),
            users=UserStore(db), contacts=ContactStore(db), campaigns=CampaignStore(db),
            journeys=JourneyStore(db), suppressions=SuppressionStore(db),
        )  # fmt: skip
    finally:
        await db.close()


class Daemon:
    def __init__(self, config: TestConfig, *, ready_timeout: float = 60.0) -> None:
        self.config = config
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self._notify: socket.socket | None = None
        self.log_path = config.dir / f"daemon-{time.monotonic_ns()}.log"
        self.notifications: list[str] = []

    def cli(self, *args: str, input: bytes | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``mtaserver ARGS -c CONFIG`` as the operator would, while the daemon runs."""
        return subprocess.run(
            [sys.executable, "-m", "mtaserver", *args, "-c", str(self.config.path)],
            input=input.decode() if input is not None else None,
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip

    def start(self) -> Daemon:
        self.config.write()
        sock_path = self.config.dir / f"notify-{time.monotonic_ns()}.sock"
        self._notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._notify.bind(str(sock_path))
        env = dict(os.environ, NOTIFY_SOCKET=str(sock_path), PYTHONUNBUFFERED="1")
        self._logf = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mtaserver", "serve", "-c", str(self.config.path)],
            stdout=self._logf, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
        )  # fmt: skip
        self.wait_for("READY=1", self.ready_timeout)
        return self

    def wait_for(self, token: str, timeout: float = 20.0) -> str:
        """Wait for a notify datagram containing ``token``; fail if the process exits."""
        assert self._notify is not None and self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._notify.settimeout(0.1)
            try:
                msg = self._notify.recv(4096).decode()
            except TimeoutError:
                if self.proc.poll() is not None:
                    raise RuntimeError(
                        f"daemon exited with {self.proc.returncode}:\n{self.log()}"
                    ) from None
                continue
            self.notifications.append(msg)
            if token in msg.split("\n"):
                return msg
        raise TimeoutError(f"no {token} from the daemon within {timeout}s:\n{self.log()}")

    def reload(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        self.wait_for("RELOADING=1")
        self.wait_for("READY=1")

    def stop(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self._finish()

    def kill(self) -> int:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        return self._finish()

    def _finish(self) -> int:
        assert self.proc is not None
        if self._notify is not None:
            self._notify.setblocking(False)
            while True:
                try:
                    self.notifications.append(self._notify.recv(4096).decode())
                except BlockingIOError:
                    break
            self._notify.close()
            self._notify = None
        self._logf.close()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __enter__(self) -> Daemon:
        return self.start()

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        code = self.stop()
        if t is None:
            assert code == 0, f"daemon exited with {code}:\n{self.log()}"
