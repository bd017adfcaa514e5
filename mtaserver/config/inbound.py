"""``[inbound]``: the port-25 listener that receives bounces and complaints."""

from __future__ import annotations

from dataclasses import dataclass

from mtaserver.config.reader import Reader


@dataclass(frozen=True, slots=True)
class InboundConfig:
    listen: tuple[str, int] | None
    bounce_domain: str | None  # VERP return paths are <prefix>+<token>@bounce_domain
    verp_prefix: str


def parse(r: Reader) -> InboundConfig:
    domain = r.string("bounce_domain", None)
    cfg = InboundConfig(
        listen=r.listen("listen", None),
        bounce_domain=domain.lower().rstrip(".") if domain else None,
        verp_prefix=r.string("verp_prefix", "b"),
    )
    r.finish()
    return cfg
