"""The ``mtaserver`` command line.

Every module in this package that defines ``register(sub)`` adds its command group;
nothing needs listing here. Operator mistakes (bad config, unknown queue id, unreachable
database) print one line on stderr and exit 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence

from mtaserver import __version__
from mtaserver.errors import MtaError

DEFAULT_CONFIG = "/etc/mtaserver/mtaserver.toml"


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command group; with ``command``, only the module named like it (if any).

    Each module imports what its commands need (storage, DKIM, Redis, PostgreSQL), ~0.5 s
    for all of them: a command run loads its own module, ``--help`` and unknown names all.
    """
    parser = argparse.ArgumentParser(
        prog="mtaserver",
        description="Self-hosted mail transfer and tracking server.",
    )
    parser.add_argument("--version", action="version", version=f"mtaserver {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    own = command.replace("-", "_") if command is not None else None
    if own in names:
        _register(sub, [own])
    if command not in sub.choices:  # no command, a typo, or registered by another module
        _register(sub, [n for n in names if n != own])
    return parser


def _register(sub: argparse._SubParsersAction[argparse.ArgumentParser], names: list[str]) -> None:
    for name in names:
        register = getattr(importlib.import_module(f"{__name__}.{name}"), "register", None)
        if register is not None:
            register(sub)


def _command_word(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command = _command_word(words)
    args = build_parser(command).parse_args(words)
    try:
        result: int = args.func(args)
    except MtaError as exc:
        print(f"mtaserver: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    return result
