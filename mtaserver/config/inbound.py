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
soft_bounce_threshold = 5        # N soft bounces ...
soft_bounce_window = "7d"        # ... within M days ...
soft_suppress_for = "30d"        # ... suppress the address for this long
hard_suppress_for = "0s"         # 0 = forever

[inbound.suppression.policy]     # category -> suppress | suppress-sender | count | ignore
mailbox-full = "count"
```
"""

from __future__ import annotations

from dataclasses import dataclass

from mtaserver.config.reader import Reader

ACTIONS = ("suppress", "suppress-sender", "count", "ignore")

# Category -> action. "suppress" is global (the address itself is bad whoever sends);
# "suppress-sender" is per sending domain (a complaint about one brand is not about another);
# "count" adds to the soft-bounce threshold; "ignore" never touches the list (blocks aimed at
# our IP or content say nothing about the recipient).
DEFAULT_POLICY: dict[str, str] = {
    "unknown-recipient": "suppress",
    "mailbox-disabled": "suppress",
    "domain-not-found": "suppress",
    "complaint": "suppress-sender",
    "unsubscribe": "suppress-sender",
    "mailbox-full": "count",
    "expired": "count",
    "other": "count",
    "message-too-large": "ignore",
    "content-rejected": "ignore",
    "spam-blocked": "ignore",
    "reputation-blocked": "ignore",
    "rate-limited": "ignore",
    "authentication-failed": "ignore",
    "policy": "ignore",
}


@dataclass(frozen=True, slots=True)
class SuppressionConfig:
    at_rcpt: str  # "reject" | "accept-and-drop"
    soft_bounce_threshold: int
    soft_bounce_window: float  # seconds
    soft_suppress_for: float  # seconds
    hard_suppress_for: float | None  # seconds; None = forever
    policy: tuple[tuple[str, str], ...]  # (category, action)

    def action(self, category: str) -> str:
        for cat, act in self.policy:
            if cat == category:
                return act
        return dict(self.policy).get("other", "count")


DEFAULT_SUPPRESSION = SuppressionConfig(
    at_rcpt="reject",
    soft_bounce_threshold=5,
    soft_bounce_window=7 * 86400.0,
    soft_suppress_for=30 * 86400.0,
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
    threshold = r.integer("soft_bounce_threshold", 5, min=1)
    window = r.duration("soft_bounce_window", 7 * 86400.0)
    soft_for = r.duration("soft_suppress_for", 30 * 86400.0)
    hard_for = r.duration("hard_suppress_for", 0.0)
    policy = dict(DEFAULT_POLICY)
    pr = r.table("policy")
    for name in pr.names():
        if name not in DEFAULT_POLICY:
            known = ", ".join(sorted(DEFAULT_POLICY))
            raise pr.error(name, f"unknown category (known: {known})")
        policy[name] = pr.choice(name, ACTIONS)
    pr.finish()
    r.finish()
    return SuppressionConfig(
        at_rcpt=at_rcpt,
        soft_bounce_threshold=threshold,
        soft_bounce_window=window,
        soft_suppress_for=soft_for,
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
