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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtaserver",
        description="Self-hosted mail transfer and tracking server.",
    )
    parser.add_argument("--version", action="version", version=f"mtaserver {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
