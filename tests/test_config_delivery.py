"""``[delivery]`` keys: defaults, units, errors naming the key, the RoutePolicy they make."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtaserver.config import ConfigError, parse_config
from mtaserver.model import RoutePolicy


def load(text: str, tmp_path: Path):
    return parse_config(text, tmp_path / "config.toml")


def error_of(text: str, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as exc:
        load(text, tmp_path)
    return str(exc.value)


def test_defaults(tmp_path: Path) -> None:
    d = load("", tmp_path).delivery
    assert d.nameservers == () and d.port == 25 and d.relay_host is None
    assert d.tls == "opportunistic" and d.hostname is None and d.ca_file is None
    assert (d.connect_timeout, d.command_timeout, d.data_timeout) == (30.0, 60.0, 300.0)
    assert d.idle_timeout == 10.0 and d.ipv6 and d.max_mx_addresses == 10


def test_all_keys(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    d = load(
        """
[delivery]
nameservers = ["127.0.0.1:5353", "[::1]:53", "192.0.2.1"]
port = 2525
relay_host = "smarthost.example.net:587"
tls = "required"
ca_file = "ca.pem"
hostname = "mta.example.com"
connect_timeout = "5s"
command_timeout = "1m"
data_timeout = "10m"
idle_timeout = "30s"
dns_timeout = "3s"
ipv6 = false
max_mx_addresses = 4
""",
        tmp_path,
    ).delivery
    assert d.nameservers == (("127.0.0.1", 5353), ("::1", 53), ("192.0.2.1", 53))
    assert d.ca_file == tmp_path / "ca.pem"
    assert (d.connect_timeout, d.command_timeout, d.data_timeout) == (5.0, 60.0, 600.0)
    assert (d.idle_timeout, d.dns_timeout, d.ipv6, d.max_mx_addresses) == (30.0, 3.0, False, 4)
    assert d.hostname == "mta.example.com"
    policy = d.route_policy(max_messages_per_connection=7)
    assert policy == RoutePolicy(
        tls="required",
        port=2525,
        relay_host="smarthost.example.net:587",
        max_messages_per_connection=7,
        connect_timeout=5.0,
        command_timeout=60.0,
        data_timeout=600.0,
        idle_timeout=30.0,
    )
    assert d.route_policy(tls="none").tls == "none"  # a destination's override wins


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('nameservers = ["dns.example:53"]', "delivery.nameservers: expected 'ip:port'"),
        ('nameservers = ["127.0.0.1:0"]', "delivery.nameservers"),
        ('tls = "maybe"', "delivery.tls: expected one of"),
        ('connect_timeout = "0s"', "delivery.connect_timeout: expected a duration above zero"),
        ("data_timeout = 30", "delivery.data_timeout: expected a duration"),
        ('hostname = "two words"', "delivery.hostname: expected a host name"),
        ('ca_file = "missing.pem"', "delivery.ca_file: file not found"),
        ("max_mx_addresses = 0", "delivery.max_mx_addresses: expected an integer >= 1"),
        ("tls_policy = {}", "delivery.tls_policy: unknown key"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, body: str, needle: str) -> None:
    assert needle in error_of(f"[delivery]\n{body}\n", tmp_path)
