"""Read the config, then check the key files it names.

The config layer parses and validates syntax only; the keys it points at (DKIM private
keys, the storage encryption keyring) are opened here, right after parsing, so a bad key
still fails ``check-config`` and every CLI command, and a SIGHUP with a bad key keeps the
old config — without the config layer importing the modules that own those formats.
"""

from __future__ import annotations

from pathlib import Path

from mtaserver.config import Config, load_config
from mtaserver.crypto import KeyFileError, load_keyring
from mtaserver.dkim.errors import DkimKeyError
from mtaserver.dkim.keys import Algorithm, load_key
from mtaserver.errors import ConfigError


def check_key_files(cfg: Config) -> Config:
    """Open every key file ``cfg`` names; raise ConfigError naming the config key."""
    for entry in cfg.dkim:
        try:
            load_key(
                entry.key,
                domain=entry.domain,
                selector=entry.selector,
                algorithm=Algorithm.from_config(entry.algorithm),
                where=f"{entry.where}.key",
            )
        except DkimKeyError as exc:
            raise ConfigError(str(exc)) from None
    key_file = cfg.storage.encryption_key_file
    if key_file is not None:
        try:
            load_keyring(key_file)
        except KeyFileError as exc:
            where = f"{cfg.source.name}: storage.encryption_key_file"
            raise ConfigError(f"{where}: {exc}") from None
    return cfg


def load_checked(path: str | Path) -> Config:
    """``load_config`` and ``check_key_files``: what the daemon and the CLI read."""
    return check_key_files(load_config(path))
