"""``mtaserver serve``: run the daemon in the foreground."""

from __future__ import annotations

import argparse

from mtaserver.cli._common import add_config_arg, config_from


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("serve", help="run the daemon in the foreground (systemd: Type=notify)")
    add_config_arg(p)
    # Internal: a submission worker started by the daemon itself ([server] workers > 1).
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--link-fd", type=int, default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.worker is not None and args.link_fd is not None:
        from mtaserver.workers.child import serve_worker

        return serve_worker(config_from(args), args.worker, args.link_fd)
    from mtaserver.app import serve  # the daemon's imports: paid by `serve` alone

    return serve(config_from(args))
