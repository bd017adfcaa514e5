"""aiosmtpd's private members, checked on the installed version: this fails when it changes.

``mtaserver.smtpd.aiosmtpd_compat`` is the only module allowed to use them. Each one is
checked for its shape, then driven through a real socket, and no other module of ours may
reach an underscore name of aiosmtpd's ``SMTP``.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtpd
import aiosmtplib
import pytest
import trustme
from aiosmtpd.smtp import MISSING, SMTP, Envelope

from mtaserver.smtpd import aiosmtpd_compat
from mtaserver.smtpd.aiosmtpd_compat import PRIVATE_MEMBERS, CompatSMTP

ROOT = Path(__file__).resolve().parents[1] / "mtaserver"


def _params(func: Any) -> list[tuple[str, Any]]:
    return [(p.name, p.kind) for p in inspect.signature(func).parameters.values()]


P = inspect.Parameter


def test_private_methods_have_the_expected_shape() -> None:
    assert _params(SMTP._reset_timeout) == [
        ("self", P.POSITIONAL_OR_KEYWORD),
        ("duration", P.POSITIONAL_OR_KEYWORD),
    ]
    assert inspect.signature(SMTP._reset_timeout).parameters["duration"].default is None
    assert _params(SMTP._timeout_cb) == [("self", P.POSITIONAL_OR_KEYWORD)]
    assert _params(SMTP._set_post_data_state) == [("self", P.POSITIONAL_OR_KEYWORD)]
    assert inspect.iscoroutinefunction(SMTP._call_handler_hook)
    assert _params(SMTP._call_handler_hook) == [
        ("self", P.POSITIONAL_OR_KEYWORD),
        ("command", P.POSITIONAL_OR_KEYWORD),
        ("args", P.VAR_POSITIONAL),
    ]
    # aiosmtpd's own code still goes through them (so overriding one changes what it does)
    source = inspect.getsource(SMTP)
    assert "self._timeout_cb" in source and "self._reset_timeout()" in source
    assert "self._reader.readuntil()" in source and "self._tls_protocol" in source


async def test_private_attributes_exist_on_a_new_session() -> None:
    smtp = SMTP(object(), loop=asyncio.get_running_loop())
    assert smtp._tls_protocol is None
    assert callable(smtp._cb_client_connected)  # where aiosmtpd sets _reader and _writer


def test_only_the_adapter_uses_aiosmtpd_private_names() -> None:
    smtp_private = {n for n in dir(SMTP) if n.startswith("_") and not n.startswith("__")}
    smtp_private |= set(PRIVATE_MEMBERS) | {"_writer", "_handler_coroutine", "_original_transport"}
    reader_private = {"_buffer", "_limit", "_transport", "_eof", "_waiter"}
    adapter = Path(aiosmtpd_compat.__file__).resolve()
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.resolve() == adapter:
            continue
        text = path.read_text()
        if "aiosmtpd" not in text and "smtpd" not in text:
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Attribute) and node.attr in smtp_private | reader_private:
                offenders.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} .{node.attr}")
    assert not offenders, offenders
    assert set(PRIVATE_MEMBERS) <= smtp_private


@dataclass
class Probe:
    sessions: list[ProbeSMTP] = field(default_factory=list)
    expired: list[float] = field(default_factory=list)


class ProbeSMTP(CompatSMTP):
    probe: Probe

    def idle_timeout_expired(self) -> None:
        self.probe.expired.append(self.loop.time())
        super().idle_timeout_expired()


class Handler:
    async def handle_NOOP(self, server: Any, session: Any, envelope: Any, arg: str) -> str:
        return f"250 noop {arg}"


@pytest.fixture
async def probe_server() -> AsyncIterator[tuple[Probe, int, ssl.SSLContext]]:
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    probe = Probe()

    def factory() -> ProbeSMTP:
        s = ProbeSMTP(Handler(), tls_context=server_ctx, timeout=0.5, hostname="probe.test")
        s.probe = probe
        probe.sessions.append(s)
        return s

    server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
    try:
        yield probe, server.sockets[0].getsockname()[1], client_ctx
    finally:
        server.close()
        await server.wait_closed()


async def test_adapter_drives_each_private_member(
    probe_server: tuple[Probe, int, ssl.SSLContext],
) -> None:
    probe, port, client_ctx = probe_server
    c = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False, tls_context=client_ctx,
                        timeout=10)  # fmt: skip
    await c.connect()
    (s,) = probe.sessions
    assert isinstance(s.stream_reader, asyncio.StreamReader)
    assert s.stream_reader is s._reader
    assert not s.tls_active
    await c.ehlo()
    # the handler hook dispatch: the handler's answer, or MISSING without a hook
    assert await s.call_hook("NOOP", "x") == "250 noop x"
    assert await s.call_hook("NO_SUCH_COMMAND") is MISSING
    old = s.envelope
    s.reset_envelope()
    assert isinstance(s.envelope, Envelope) and s.envelope is not old
    await c.starttls()
    assert s.tls_active
    await c.ehlo()
    # the idle timer: postponed by reset_idle_timer, then it calls idle_timeout_expired
    started = s.loop.time()
    s.reset_idle_timer(1.5)
    await asyncio.wait_for(_until(lambda: bool(probe.expired)), 10)
    assert probe.expired[0] - started >= 1.4
    with pytest.raises(aiosmtplib.SMTPServerDisconnected):
        await c.noop()
    c.close()


async def test_default_idle_timeout_closes(probe_server: tuple[Probe, int, ssl.SSLContext]) -> None:
    probe, port, _ = probe_server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert (await reader.readline()).startswith(b"220")
    assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the 0.5 s timer
    assert len(probe.expired) == 1
    writer.close()


def test_written_against_this_aiosmtpd() -> None:
    """A reminder with the version the adapter was checked on; the checks above decide."""
    major, minor = (int(x) for x in aiosmtpd.__version__.split(".")[:2])
    assert (major, minor) >= (1, 4), aiosmtpd.__version__


async def _until(cond: Any) -> None:
    while not cond():
        await asyncio.sleep(0.02)
