"""``[tracking]`` keys: defaults, per-user switches, and errors naming the key path."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from mtaserver.config import ConfigError, parse_config
from mtaserver.config.tracking import TrackDefaults


def load(text: str, tmp_path: Path):
    return parse_config(text, tmp_path / "config.toml")


def test_defaults(tmp_path: Path) -> None:
    t = load("[server]\ndata_dir = 'd'\n", tmp_path).tracking
    assert t.listen is None and t.base_url is None
    assert t.secret_file == tmp_path / "d" / "tracking.key"
    assert (t.ip_privacy, t.scanner_window, t.burst_window, t.burst_links) == ("truncate", 10, 2, 3)
    assert t.access_log is False and t.unsubscribe_mailto is None
    assert t.defaults_for("anyone") == TrackDefaults(False, False, False)


def test_every_key_and_per_user_switches(tmp_path: Path) -> None:
    (tmp_path / "bots.toml").write_text("")
    t = load(
        """
[tracking]
listen = "127.0.0.1:8080"
base_url = "https://t.example.com/"
secret_file = "keys/tracking.key"
ip_privacy = "hash"
unsubscribe_mailto = "unsubscribe@example.com"
scanner_window = "30s"
burst_window = "500ms"
burst_links = 4
bot_rules_file = "bots.toml"
trusted_proxies = ["10.0.0.0/8"]
access_log = true
opens = true

[tracking.users.news]
clicks = true
unsubscribe = true

[tracking.users.quiet]
opens = false

[inbound]
listen = "127.0.0.1:2525"
bounce_domain = "bounces.example.com"
""",
        tmp_path,
    ).tracking
    assert t.listen == ("127.0.0.1", 8080) and t.base_url == "https://t.example.com"
    assert t.secret_file == tmp_path / "keys" / "tracking.key"
    assert (t.ip_privacy, t.scanner_window, t.burst_window, t.burst_links) == ("hash", 30, 0.5, 4)
    assert t.bot_rules_file == tmp_path / "bots.toml"
    assert t.trusted_proxies == (ipaddress.ip_network("10.0.0.0/8"),)
    assert t.defaults_for(None) == TrackDefaults(True, False, False)
    assert t.defaults_for("news") == TrackDefaults(True, True, True)  # inherits opens
    assert t.defaults_for("quiet") == TrackDefaults(False, False, False)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('ip_privacy = "anonymize"', "tracking.ip_privacy: expected one of"),
        ('listen = "127.0.0.1:8080"', "tracking.base_url: required when [tracking] listen"),
        ('base_url = "ftp://t.example.com"', "tracking.base_url: expected an http(s) URL"),
        ('base_url = "https://t.example.com/a b"', "tracking.base_url: expected an http(s) URL"),
        ('unsubscribe_mailto = "not an address"', "tracking.unsubscribe_mailto: expected an email"),
        (
            'unsubscribe_mailto = "u@bounces.example.com"',
            "tracking.unsubscribe_mailto: mail to it is processed by the inbound listener, "
            "which needs [inbound] listen and bounce_domain",
        ),
        ('scanner_window = "10 seconds"', "tracking.scanner_window: expected a duration"),
        ("burst_links = 1", "tracking.burst_links: expected an integer >= 2"),
        ('bot_rules_file = "missing.toml"', "tracking.bot_rules_file: file not found"),
        ("colour = 1", "tracking.colour: unknown key"),
        ("[tracking.users.x]\nopen = true", "tracking.users.x.open: unknown key"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(f"[tracking]\n{body}\n", tmp_path)
    assert message in str(exc.value)
