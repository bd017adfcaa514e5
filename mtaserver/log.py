"""One ``key=value`` line per event on stderr; journald adds the timestamp.

Values are quoted when they contain spaces or quotes, so a line stays one line and can be
parsed back. Never pass passwords or message bodies here.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

_LOGGER_ROOT = "mtaserver"


def _fmt_value(value: Any) -> str:
    text = str(value)
    text = text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")
    if text == "" or any(c in text for c in ' "='):
        text = '"' + text.replace('"', '\\"') + '"'
    return text


def kv(**fields: Any) -> str:
    """Render fields as ``k=v k2="v 2"``; ``None`` values are left out."""
    return " ".join(f"{k}={_fmt_value(v)}" for k, v in fields.items() if v is not None)


def get_logger(name: str) -> logging.Logger:
    return logging.getLogger(f"{_LOGGER_ROOT}.{name}")


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        head = (
            f"level={record.levelname.lower()} component={record.name.removeprefix('mtaserver.')}"
        )
        msg = record.getMessage()
        line = f"{head} {msg}" if msg else head
        if record.exc_info:
            # Exception type only: tracebacks of operator-facing code go to debug.
            exc = record.exc_info[1]
            line += " " + kv(error=type(exc).__name__)
            if logging.getLogger(_LOGGER_ROOT).isEnabledFor(logging.DEBUG):
                line += "\n" + self.formatException(record.exc_info)
        return line


def set_level(level: str) -> None:
    """Change the level of the ``mtaserver`` logger tree (a reload's new ``log_level``)."""
    logging.getLogger(_LOGGER_ROOT).setLevel(level.upper())


def setup_logging(level: str = "info") -> None:
    """Configure the ``mtaserver`` logger tree to write key=value lines to stderr."""
    root = logging.getLogger(_LOGGER_ROOT)
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
    # Library chatter (aiosmtpd logs every command, including AUTH lines) stays quiet.
    for noisy in ("mail.log", "aiosmtpd", "aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
