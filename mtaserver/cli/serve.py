"""``mtaserver serve``: run the daemon in the foreground."""

from __future__ import annotations

import argparse

from mtaserver.cli._common import add_config_arg, config_from


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the daemon in the foreground (systemd: Type=notify)")
    add_config_arg(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from mtaserver.app import serve  # the daemon's imports: paid by `serve` alone

    return serve(config_from(args))
