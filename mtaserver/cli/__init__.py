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
    if command is not None and command.replace("-", "_") in names:
        names = [command.replace("-", "_")]
    for name in names:
        module = importlib.import_module(f"{__name__}.{name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def _command_word(argv: Sequence[str]) -> str | None:
    return next((a for a in argv if not a.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command = _command_word(words)
    parser = build_parser(command)
    if command is not None and command not in _commands(parser):
        parser = build_parser()  # registered by another module, or a typo: ask them all
    args = parser.parse_args(words)
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


def _commands(parser: argparse.ArgumentParser) -> set[str]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return set(action.choices)
    return set()
