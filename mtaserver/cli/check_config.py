"""``mtaserver check-config``: validate the config and print what it sets up."""

from __future__ import annotations

import argparse

from mtaserver.cli._common import add_config_arg, config_from
from mtaserver.config import Config
from mtaserver.config.units import format_duration


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("check-config", help="validate the config file; exit 2 on errors")
    add_config_arg(p)
    p.set_defaults(func=run)


def _addr(a: tuple[str, int] | None) -> str:
    if a is None:
        return "off"
    host, port = a
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def summary(cfg: Config) -> str:
    s = cfg.submission
    lines = [
        f"config ok: {cfg.source}",
        f"hostname       {cfg.server.hostname}",
        f"data           {cfg.storage.database}",
        "listeners",
        f"  submission   {_addr(s.listen)} (STARTTLS{' required' if s.require_tls else ''})",
        f"  submission   {_addr(s.listen_tls)} (implicit TLS)",
        f"  plain        {_addr(s.listen_plain)} (trusted networks only)",
        f"  inbound      {_addr(cfg.inbound.listen)} bounce domain "
        f"{cfg.inbound.bounce_domain or '-'}",
        f"  tracking     {_addr(cfg.tracking.listen)} {cfg.tracking.base_url or ''}".rstrip(),
        f"  admin        {_addr(cfg.admin.listen)}",
        f"tls            {cfg.tls.cert or 'none'}",
        f"trusted nets   {', '.join(str(n) for n in s.trusted_networks) or 'none'}",
        f"delivery       tls={cfg.delivery.tls} port={cfg.delivery.port} "
        f"relay={cfg.delivery.relay_host or 'MX'} "
        f"dns={','.join(f'{h}:{p}' for h, p in cfg.delivery.nameservers) or 'system'}",
        f"shaping        default max_connections={cfg.shaping.default.max_connections} "
        f"rate={_rate(cfg.shaping.default.max_rate)}; {len(cfg.shaping.domains)} destination(s)",
        "dkim keys",
    ]
    lines += [f"  {k.domain:<22} {k.selector:<12} {k.algorithm:<15} {k.key}" for k in cfg.dkim]
    if not cfg.dkim:
        lines.append("  none (mail leaves unsigned)")
    for i in cfg.oauth.issuers:
        lines.append(f"oauth issuer   {i.issuer} aud={','.join(i.audience)} user={i.user_claim} "
                     f"keys={i.jwks_uri or i.jwks_file}")  # fmt: skip
    lines.append(f"limits         size={s.max_message_size} rcpts={s.max_recipients} "
                 f"idle={format_duration(s.idle_timeout)}")  # fmt: skip
    return "\n".join(lines)


def _rate(r: float | None) -> str:
    if r is None:
        return "unlimited"
    return f"{r * 60:g}/min"


def run(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    if any(h.format == "sendgrid" for h in cfg.webhooks):
        from mtaserver.webhooks.sendgrid import load_keys

        load_keys(cfg.webhooks)  # the daemon loads them at start: find a bad key here first
    if cfg.oauth.enabled:
        from mtaserver.clock import SystemClock
        from mtaserver.oauth import TokenVerifier

        TokenVerifier(cfg.oauth, SystemClock())  # reads jwks_file keys: a bad file shows here
    print(summary(cfg))
    return 0
