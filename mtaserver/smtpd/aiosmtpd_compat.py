"""The one module that touches aiosmtpd's private members (written against aiosmtpd 1.4.6).

aiosmtpd documents its handler hooks and ``SMTP``'s constructor, but a session that reads
DATA itself and answers timeouts with a 421 needs four things it keeps private: the stream
it reads commands from, its idle timer (reset and expiry), its handler-hook dispatch and its
post-DATA reset; and one more to tell whether STARTTLS happened. :class:`CompatSMTP` gives
each a public name here, and nothing else in ``mtaserver`` uses an underscore name of
aiosmtpd. ``tests/test_smtpd_compat.py`` checks every name in :data:`PRIVATE_MEMBERS` on the
installed version (and drives each through a real socket), so an upgrade that renames or
reshapes one fails there, loudly.

:class:`ProtocolMembers` is the other accommodation: aiosmtpd's constructor walks every
member of the session and of the handler (``inspect.getmembers``, ``dir``) to find their
``auth_*``, ``smtp_*`` and ``handle_*`` methods, and reads ``handle_EHLO``'s signature —
once per connection, ~60 % of a session's construction. Both classes list those names
once per class instead (``tests/test_smtpd_members.py`` checks the tables come out the same).
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any, ClassVar

from aiosmtpd.smtp import SMTP

# The private members used below: name → what it is in aiosmtpd 1.4.6.
PRIVATE_MEMBERS: dict[str, str] = {
    "_reader": "instance attribute: the asyncio.StreamReader commands and DATA are read from",
    "_reset_timeout": "method (self, duration=None): (re)start the idle timer",
    "_timeout_cb": "method (self): called by the idle timer; closes the transport",
    "_call_handler_hook": "coroutine (self, command, *args): run handler.handle_<command>",
    "_set_post_data_state": "method (self): a fresh envelope after DATA",
    "_tls_protocol": "instance attribute: the SSLProtocol once STARTTLS began, else None",
}


_PROTOCOL_PREFIXES = ("auth_", "smtp_", "handle_")


class ProtocolMembers:
    """``dir()`` lists only the protocol methods aiosmtpd's ``SMTP.__init__`` looks for.

    That constructor builds its method tables from ``dir`` and ``inspect.getmembers`` of
    the session and the handler on every connection; computing the names once per class
    (at class creation) makes that walk a few lookups instead of hundreds of ``getattr``.
    ``handle_EHLO``'s signature, which it inspects each time, is attached once as well.
    Names set on an instance (not the class) are not listed: ours define none.
    """

    _protocol_names: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._protocol_names = tuple(n for n in dir(cls) if n.startswith(_PROTOCOL_PREFIXES))
        ehlo = cls.__dict__.get("handle_EHLO")
        if inspect.isfunction(ehlo) and not hasattr(ehlo, "__signature__"):
            ehlo.__signature__ = inspect.signature(ehlo)  # type: ignore[attr-defined]

    def __dir__(self) -> list[str]:
        return list(self._protocol_names)


class CompatSMTP(ProtocolMembers, SMTP):
    """aiosmtpd's ``SMTP`` with public names for the private members a hardened session uses."""

    @property
    def stream_reader(self) -> asyncio.StreamReader:
        """Where commands and DATA come from (valid once the connection is made)."""
        reader: asyncio.StreamReader = self._reader
        return reader

    @property
    def tls_active(self) -> bool:
        """True once STARTTLS has begun on this connection (not for implicit TLS)."""
        return self._tls_protocol is not None

    def reset_idle_timer(self, duration: float | None = None) -> None:
        """Restart the idle timer: ``duration`` seconds, else the constructor's ``timeout``."""
        self._reset_timeout(duration)

    def _timeout_cb(self) -> None:
        self.idle_timeout_expired()

    def idle_timeout_expired(self) -> None:
        """The idle timer fired. aiosmtpd closes the connection; subclasses may do more."""
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    async def call_hook(self, command: str, *args: Any) -> Any:
        """The handler's ``handle_<command>`` result, or aiosmtpd's ``MISSING``."""
        return await self._call_handler_hook(command, *args)

    def reset_envelope(self) -> None:
        """Start a fresh envelope, as aiosmtpd does after DATA."""
        self._set_post_data_state()  # type: ignore[no-untyped-call]
