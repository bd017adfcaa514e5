"""Reply lines every SMTP listener shares: enhanced status codes and the failure replies.

aiosmtpd's own replies carry no RFC 3463 enhanced code, and an exception in a handler
becomes ``500 Error: (ExcClass) message`` — a permanent failure that leaks internals
(PITFALLS). :func:`enhance` adds the code; :func:`storage_reply` is the generic answer.
"""

from __future__ import annotations

import re

from mtaserver.errors import StorageError

_ENHANCED = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}(?: |$)")
_DEFAULT_ENHANCED = {
    "220": "2.0.0",
    "221": "2.0.0",
    "235": "2.7.0",
    "250": "2.0.0",
    "252": "2.5.0",
    "421": "4.3.0",
    "451": "4.3.0",
    "452": "4.3.1",
    "454": "4.7.0",
    "500": "5.5.2",
    "501": "5.5.4",
    "502": "5.5.1",
    "503": "5.5.1",
    "504": "5.5.4",
    "530": "5.7.0",
    "535": "5.7.8",
    "538": "5.7.11",
    "550": "5.0.0",
    "552": "5.3.4",
    "553": "5.1.3",
    "554": "5.7.0",
    "555": "5.5.4",
}
NO_ENHANCED = frozenset({"334", "354"})  # AUTH challenges and "start mail input"
INTERNAL_ERROR = "451 4.3.0 Internal error, try again later"
STORAGE_FULL = "452 4.3.1 Insufficient system storage, try again later"
STORAGE_ERROR = "451 4.3.0 Temporary storage failure, try again later"
IDLE_TIMEOUT = "421 4.4.2 Idle timeout exceeded, closing connection"
SESSION_TIMEOUT = "421 4.4.2 Maximum session time exceeded, closing connection"
SHUTTING_DOWN = "421 4.3.2 Service shutting down, try again later"


def enhance(status: str) -> str:
    """``status`` with an RFC 3463 enhanced code after the reply code, unless it has one."""
    code, sep, text = status[:3], status[3:4], status[4:]
    if not code.isdigit() or sep not in (" ", "-", ""):
        return status
    if code in NO_ENHANCED or _ENHANCED.match(text):
        return status
    if code == "500" and "not recognized" in text:
        text = "Error: command not recognized"
    enhanced = _DEFAULT_ENHANCED.get(code, f"{code[0]}.0.0")
    return f"{code}{sep or ' '}{enhanced} {text}".rstrip()


def storage_reply(exc: BaseException) -> str:
    """The reply for a storage failure: 452 when full, else 451; never the error text."""
    if isinstance(exc, StorageError):
        return STORAGE_FULL if exc.full else STORAGE_ERROR
    if isinstance(exc, OSError) and exc.errno == 28:  # ENOSPC
        return STORAGE_FULL
    return INTERNAL_ERROR
