"""ProtocolMembers: aiosmtpd's per-session method tables come out as a full member walk's.

aiosmtpd's ``SMTP.__init__`` finds ``auth_*``/``smtp_*``/``handle_*`` by walking ``dir()``
of the session and the handler on every connection; ours list those names once per class.
If a new hook were missed (or aiosmtpd looked for another prefix), these tables would differ.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

from mtaserver.clock import SystemClock
from mtaserver.ratelimit import ConnectionLimiter
from mtaserver.smtpd.aiosmtpd_compat import ProtocolMembers
from mtaserver.submission.handler import SubmissionHandler
from mtaserver.submission.protocol import ListenerSpec, SessionSettings, SubmissionSMTP


def _full(obj: Any, prefix: str) -> set[str]:
    """The names a walk of every member (object.__dir__, as without ProtocolMembers) finds."""
    return {n.removeprefix(prefix) for n in object.__dir__(obj) if n.startswith(prefix)}


async def test_method_tables_equal_a_full_walk() -> None:
    handler = SubmissionHandler(
        submitter=None,  # type: ignore[arg-type]
        authenticator=None,  # type: ignore[arg-type]
        throttle=None,  # type: ignore[arg-type]
        clock=SystemClock(),
        max_recipients=10,
        max_header_size=1000,
    )
    session = SubmissionSMTP(
        handler,
        listener=ListenerSpec("plain", starttls=False, require_tls=False),
        settings=SessionSettings("mx.example", 10_000, 30.0, 60.0, "normalize"),
        connections=ConnectionLimiter(5),
        tls_context=None,
        loop=asyncio.get_running_loop(),
    )
    assert set(session._smtp_methods) == _full(session, "smtp_")
    assert set(session._handle_hooks) == _full(handler, "handle_")
    auth = {n.replace("__", "-") for n in _full(session, "auth_") | _full(handler, "auth_")}
    assert set(session._auth_methods) == auth - set(handler.excluded_mechanisms)
    assert session._ehlo_hook_ver == "new"  # the attached signature still has 5 parameters
    assert {"PLAIN", "LOGIN", "DATA", "RCPT", "EHLO"} <= set(session._auth_methods) | set(
        session._handle_hooks
    ) | set(session._smtp_methods)


def test_names_are_listed_per_class_and_include_subclass_methods() -> None:
    class Extra(ProtocolMembers):
        def handle_NOOP(self) -> None: ...

    class More(Extra):
        def smtp_X(self) -> None: ...

        async def handle_EHLO(self, a: Any, b: Any, c: Any, d: Any, e: Any) -> None: ...

    assert dir(Extra()) == ["handle_NOOP"]
    assert dir(More()) == ["handle_EHLO", "handle_NOOP", "smtp_X"]
    assert len(inspect.signature(More().handle_EHLO).parameters) == 5
