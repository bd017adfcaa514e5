"""Tell machine opens and clicks from human ones (flag, never drop).

Rules, in the order they are tried (the first that matches gives the reason):

- ``proxy:<name>`` - an image proxy from the rules file (Apple Mail Privacy Protection
  prefetches every image at delivery; Gmail/Yahoo proxies), by user agent or network;
- ``scanner-ua`` - a security link scanner or an automated client, by user agent;
- ``no-user-agent`` - browsers always send one;
- ``before-delivery`` - a click on a message whose delivery is not even recorded yet;
- ``early-click`` - a click within ``scanner_window`` seconds of delivery;
- ``after-head`` - a GET that follows a HEAD for the same recipient within the window
  (link scanners probe with HEAD first; HEAD itself is answered but never counted);
- ``burst`` - every link of the message (or ``burst_links`` different links) clicked for
  one recipient within ``burst_window`` seconds: people click one link at a time.

Everything here is pure: the recorder supplies the delivery time and the nearby hits.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_CACHE_SIZE = 50_000


class BotRulesError(ValueError):
    """The bot rules file is malformed."""


@dataclass(frozen=True, slots=True)
class ProxyRule:
    name: str
    machine: bool
    applies_to: frozenset[str]
    user_agents: tuple[re.Pattern[str], ...]
    networks: tuple[Network, ...]

    def matches(
        self, user_agent: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    ) -> bool:
        if any(p.search(user_agent) for p in self.user_agents):
            return True
        return ip is not None and any(ip in n for n in self.networks)


@dataclass(frozen=True, slots=True)
class BotRules:
    proxies: tuple[ProxyRule, ...]
    scanner_agents: tuple[re.Pattern[str], ...]


class Hit(NamedTuple):
    """One GET on a tracking endpoint, as seen before any privacy treatment of the IP.

    A NamedTuple rather than a dataclass: one is built per request on the hot path.
    """

    type: str  # "open" | "click"
    queue_id: str
    idx: int
    at: float
    user_agent: str
    ip: str
    link: int = 0
    links: int = 0
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    machine: bool
    reason: str | None = None
    proxy: str | None = None  # a non-machine proxy the hit came through


HUMAN = Verdict(False)


def _str_list(table: dict[str, Any], key: str, where: str) -> list[str]:
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BotRulesError(f"{where}.{key}: expected a list of strings")
    return value


def _compile(patterns: list[str], where: str) -> tuple[re.Pattern[str], ...]:
    try:
        return tuple(re.compile(p, re.IGNORECASE) for p in patterns)
    except re.error as exc:
        raise BotRulesError(f"{where}: bad regular expression: {exc}") from None


def parse_rules(text: str, source: str = "tracking_bots.toml") -> BotRules:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BotRulesError(f"{source}: {exc}") from None
    proxies: list[ProxyRule] = []
    for i, raw in enumerate(doc.get("proxy", [])):
        where = f"{source}: proxy[{i}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise BotRulesError(f"{where}.name: expected a string")
        unknown = set(raw) - {"name", "machine", "applies_to", "user_agents", "networks"}
        if unknown:
            raise BotRulesError(f"{where}: unknown key {sorted(unknown)[0]}")
        try:
            nets = tuple(ipaddress.ip_network(n) for n in _str_list(raw, "networks", where))
        except ValueError as exc:
            raise BotRulesError(f"{where}.networks: {exc}") from None
        proxies.append(
            ProxyRule(
                name=raw["name"],
                machine=bool(raw.get("machine", True)),
                applies_to=frozenset(_str_list(raw, "applies_to", where) or ["open"]),
                user_agents=_compile(_str_list(raw, "user_agents", where), where),
                networks=nets,
            )
        )
    scanners = doc.get("scanners", {})
    if not isinstance(scanners, dict):
        raise BotRulesError(f"{source}: scanners: expected a table")
    agents = _compile(_str_list(scanners, "user_agents", f"{source}: scanners"), source)
    return BotRules(tuple(proxies), agents)


def load_rules(path: Path | None = None) -> BotRules:
    """The packaged rules, or the operator's file when ``path`` is given."""
    if path is None:
        text = resources.files("mtaserver").joinpath("data/tracking_bots.toml").read_text("utf-8")
        return parse_rules(text)
    try:
        return parse_rules(path.read_text("utf-8"), str(path))
    except OSError as exc:
        raise BotRulesError(f"{path}: {exc.strerror}") from None


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


class BotDetector:
    """Applies the rules; windows are in seconds."""

    def __init__(
        self,
        rules: BotRules,
        scanner_window: float = 10.0,
        burst_window: float = 2.0,
        burst_links: int = 3,
    ) -> None:
        self.rules = rules
        self.scanner_window = scanner_window
        self.burst_window = burst_window
        self.burst_links = max(2, burst_links)
        self._cache: dict[tuple[str, str, str], Verdict] = {}
        self._scanners = (
            re.compile("|".join(f"(?:{p.pattern})" for p in rules.scanner_agents), re.IGNORECASE)
            if rules.scanner_agents
            else None
        )

    def by_agent(self, type_: str, user_agent: str, ip: str) -> Verdict:
        """What the request alone says (user agent, network); memoized, user agents repeat."""
        key = (type_, user_agent, ip)
        verdict = self._cache.get(key)
        if verdict is None:
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.clear()
            verdict = self._cache[key] = self._by_agent(type_, user_agent, ip)
        return verdict

    def _by_agent(self, type_: str, user_agent: str, ip: str) -> Verdict:
        addr = _ip(ip)
        passed: str | None = None
        for rule in self.rules.proxies:
            if type_ in rule.applies_to and rule.matches(user_agent, addr):
                if rule.machine:
                    return Verdict(True, f"proxy:{rule.name}")
                passed = passed or rule.name
        if self._scanners is not None and self._scanners.search(user_agent):
            return Verdict(True, "scanner-ua")
        if not user_agent.strip():
            return Verdict(True, "no-user-agent")
        return Verdict(False, None, passed)

    def classify(
        self,
        hit: Hit,
        *,
        known: bool,
        delivered_at: float | None,
        nearby: Sequence[Hit] = (),
        heads: Sequence[float] = (),
    ) -> Verdict:
        """Judge one hit given the recipient's delivery time and its other recent hits.

        ``known``: the recipient was found in the queue tables (when it was not, e.g. after
        retention removed it, timing rules are skipped). ``nearby``: other GET hits for the
        same recipient; ``heads``: times of HEAD requests for the same recipient.
        """
        verdict = self.by_agent(hit.type, hit.user_agent, hit.ip)
        if verdict.machine or hit.type != "click":
            return verdict
        if known and delivered_at is None:
            return Verdict(True, "before-delivery")
        if delivered_at is not None and hit.at - delivered_at < self.scanner_window:
            return Verdict(True, "early-click")
        if any(0 <= hit.at - t <= self.scanner_window for t in heads):
            return Verdict(True, "after-head")
        if hit.links == 1:
            return verdict  # a message with one link cannot be clicked through in a burst
        links = {
            h.link
            for h in nearby
            if h.type == "click"
            and h.queue_id == hit.queue_id
            and h.idx == hit.idx
            and abs(h.at - hit.at) <= self.burst_window
        }
        links.add(hit.link)
        need = min(hit.links, self.burst_links) if hit.links else self.burst_links
        if len(links) >= max(2, need):
            return Verdict(True, "burst")
        return verdict
