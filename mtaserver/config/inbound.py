"""``[inbound]``: the port-25 listener that receives bounces and complaints.

```toml
[inbound]
listen = "0.0.0.0:25"
bounce_domain = "bounces.example.com"   # VERP return paths <prefix>+<token>@bounce_domain
verp_prefix = "b"
complaints_address = "fbl@bounces.example.com"  # feedback-loop (ARF) reports land here
max_message_size = "10MiB"
max_recipients = 20
max_connections = 200
max_connections_per_ip = 10
connection_rate_per_ip = "60/min"
command_timeout = "60s"
data_timeout = "5m"
parse_timeout = "10s"

[inbound.suppression]
at_rcpt = "reject"               # or "accept-and-drop" (submission drops with an event)
soft_bounce_window = "7d"        # how long counted (soft) bounces are kept
hard_suppress_for = "0s"         # dead addresses and complaints: 0 = forever

[inbound.suppression.policy]     # category -> narrower action: count | ignore
mailbox-full = "count"
```

The policy itself is ``mtaserver.suppression.decide`` (only dead addresses globally,
complaints and unsubscribes per sending domain, the rest counted); the table can only narrow
it: a dead-address category may be set to ``count``, any category to ``ignore`` (not even
counted), never a wider action. ``soft_bounce_threshold`` and ``soft_suppress_for`` are
still read so that older files load, and do nothing: soft bounces never suppress.
"""

from __future__ import annotations

from dataclasses import dataclass

from mtaserver.config.reader import Reader

ACTIONS = ("suppress", "suppress-sender", "count", "ignore")

# Category -> what the policy does by default (classify.toml's kinds, which a test checks):
# "suppress" is global (a dead address is dead whoever sends); "suppress-sender" is per
# sending domain (a complaint about one brand is not about another); "count" only adds to
# the soft-bounce counter (the message was refused, not the address). "ignore" is never a
# default: an operator may set it to not even count a category.
DEFAULT_POLICY: dict[str, str] = {
    "unknown-recipient": "suppress",
    "mailbox-disabled": "suppress",
    "domain-not-found": "suppress",
    "complaint": "suppress-sender",
    "unsubscribe": "suppress-sender",
    "mailbox-full": "count",
    "expired": "count",
    "other": "count",
    "message-too-large": "count",
    "content-rejected": "count",
    "spam-blocked": "count",
    "reputation-blocked": "count",
    "rate-limited": "count",
    "authentication-failed": "count",
    "policy": "count",
}


@dataclass(frozen=True, slots=True)
class SuppressionConfig:
    at_rcpt: str  # "reject" | "accept-and-drop"
    soft_bounce_window: float  # seconds counted bounces are kept
    hard_suppress_for: float | None  # seconds; None = forever
    policy: tuple[tuple[str, str], ...]  # (category, action): the defaults, narrowed

    def action(self, category: str) -> str:
        for cat, act in self.policy:
            if cat == category:
                return act
        return dict(self.policy).get("other", "count")


DEFAULT_SUPPRESSION = SuppressionConfig(
    at_rcpt="reject",
    soft_bounce_window=7 * 86400.0,
    hard_suppress_for=None,
    policy=tuple(DEFAULT_POLICY.items()),
)


@dataclass(frozen=True, slots=True)
class InboundConfig:
    listen: tuple[str, int] | None
    bounce_domain: str | None  # VERP return paths are <prefix>+<token>@bounce_domain
    verp_prefix: str
    complaints_address: str | None = None
    max_message_size: int = 10 * 1024 * 1024
    max_recipients: int = 20
    max_connections: int = 200
    max_connections_per_ip: int = 10
    connection_rate_per_ip: float = 1.0  # new connections per second per IP
    command_timeout: float = 60.0
    data_timeout: float = 300.0
    parse_timeout: float = 10.0
    suppression: SuppressionConfig = DEFAULT_SUPPRESSION


def _suppression(r: Reader) -> SuppressionConfig:
    at_rcpt = r.choice("at_rcpt", ("reject", "accept-and-drop"), "reject")
    # Read so that older files still load; soft bounces no longer suppress (issue 16).
    r.integer("soft_bounce_threshold", 5, min=1)
    r.duration("soft_suppress_for", 30 * 86400.0)
    window = r.duration("soft_bounce_window", 7 * 86400.0)
    hard_for = r.duration("hard_suppress_for", 0.0)
    policy = dict(DEFAULT_POLICY)
    pr = r.table("policy")
    for name in pr.names():
        if name not in DEFAULT_POLICY:
            known = ", ".join(sorted(DEFAULT_POLICY))
            raise pr.error(name, f"unknown category (known: {known})")
        action = pr.choice(name, ACTIONS)
        allowed = (DEFAULT_POLICY[name], "count", "ignore")
        if action not in allowed:
            raise pr.error(
                name,
                f"{action!r} would suppress for a reason that does not mean the address is "
                f"dead; {name} allows {' | '.join(dict.fromkeys(allowed))}",
            )
        policy[name] = action
    pr.finish()
    r.finish()
    return SuppressionConfig(
        at_rcpt=at_rcpt,
        soft_bounce_window=window,
        hard_suppress_for=hard_for or None,
        policy=tuple(policy.items()),
    )


def parse(r: Reader) -> InboundConfig:
    domain = r.string("bounce_domain", None)
    complaints = r.string("complaints_address", None)
    if complaints is not None and (
        complaints.count("@") != 1 or not complaints.split("@")[0] or " " in complaints
    ):
        raise r.error("complaints_address", f"expected an address, got {complaints!r}")
    cfg = InboundConfig(
        listen=r.listen("listen", None),
        bounce_domain=domain.lower().rstrip(".") if domain else None,
        verp_prefix=r.string("verp_prefix", "b"),
        complaints_address=complaints.lower() if complaints else None,
        max_message_size=r.size("max_message_size", 10 * 1024 * 1024),
        max_recipients=r.integer("max_recipients", 20, min=1),
        max_connections=r.integer("max_connections", 200, min=1),
        max_connections_per_ip=r.integer("max_connections_per_ip", 10, min=1),
        connection_rate_per_ip=r.rate("connection_rate_per_ip", 1.0),
        command_timeout=r.duration("command_timeout", 60.0),
        data_timeout=r.duration("data_timeout", 300.0),
        parse_timeout=r.duration("parse_timeout", 10.0),
        suppression=_suppression(r.table("suppression")),
    )
    r.finish()
    if cfg.listen is not None and cfg.bounce_domain is None:
        raise r.error("listen", "the inbound listener needs bounce_domain")
    return cfg
