"""Keys a running daemon cannot take on SIGHUP: the old value stays until a restart.

Listening sockets are bound before READY=1, the database and state directory are opened
once, and the host name and VERP domain are baked into objects that outlive a reload. A
reload that changes one of them keeps the running value (so the config the daemon reports
is the one it runs) and names the key, so the operator knows a restart is needed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from mtaserver.config import Config

# (section, key) pairs, in the order they are reported.
RESTART_KEYS: tuple[tuple[str, str], ...] = (
    ("server", "hostname"),
    ("server", "data_dir"),
    ("server", "secret_file"),
    ("server", "workers"),
    ("storage", "database"),
    ("submission", "listen"),
    ("submission", "listen_tls"),
    ("submission", "listen_plain"),
    ("submission", "require_tls"),
    ("delivery", "lease"),
    ("inbound", "listen"),
    ("inbound", "bounce_domain"),
    ("inbound", "verp_prefix"),
    ("tracking", "listen"),
    ("tracking", "base_url"),
    ("tracking", "secret_file"),
    ("tracking", "unsubscribe_mailto"),
    ("admin", "listen"),
    ("admin", "tls"),
)


def keep_restart_keys(old: Config, new: Config) -> tuple[Config, tuple[str, ...]]:
    """``new`` with every restart-only key set back to its ``old`` value, and the
    dotted names (``submission.listen``) of the keys that differed."""
    changed: list[str] = []
    kept: dict[str, dict[str, Any]] = {}
    for section, key in RESTART_KEYS:
        before = getattr(getattr(old, section), key)
        if getattr(getattr(new, section), key) != before:
            changed.append(f"{section}.{key}")
            kept.setdefault(section, {})[key] = before
    sections = {
        name: dataclasses.replace(getattr(new, name), **values) for name, values in kept.items()
    }
    return (dataclasses.replace(new, **sections) if sections else new), tuple(changed)
