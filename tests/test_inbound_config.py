"""``[inbound]`` keys of the bounces capability: limits, complaints address, policy table."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtaserver.config import ConfigError, parse_config


def load(text: str):
    return parse_config(text, Path("/tmp") / "config.toml")


def test_defaults() -> None:
    cfg = load('[inbound]\nbounce_domain = "b.example"\n').inbound
    assert cfg.complaints_address is None and cfg.max_message_size == 10 * 1024 * 1024
    s = cfg.suppression
    assert s.at_rcpt == "reject"
    assert s.soft_bounce_window == 7 * 86400 and s.hard_suppress_for is None
    assert s.action("unknown-recipient") == "suppress"
    assert s.action("complaint") == "suppress-sender"
    assert s.action("reputation-blocked") == "count"  # counted, never suppressed
    assert s.action("mailbox-full") == "count"


def test_full_section() -> None:
    cfg = load(
        '[inbound]\nlisten = "127.0.0.1:2525"\nbounce_domain = "B.Example."\n'
        'complaints_address = "FBL@b.example"\nmax_message_size = "2MiB"\n'
        'max_connections_per_ip = 3\nconnection_rate_per_ip = "10/min"\n'
        'command_timeout = "20s"\nparse_timeout = "2s"\n'
        '[inbound.suppression]\nat_rcpt = "accept-and-drop"\nsoft_bounce_threshold = 3\n'
        'soft_bounce_window = "2d"\nsoft_suppress_for = "10d"\nhard_suppress_for = "365d"\n'
        '[inbound.suppression.policy]\nunknown-recipient = "count"\nrate-limited = "ignore"\n'
    ).inbound
    assert cfg.bounce_domain == "b.example" and cfg.complaints_address == "fbl@b.example"
    assert cfg.max_message_size == 2 * 1024 * 1024 and cfg.max_connections_per_ip == 3
    assert cfg.connection_rate_per_ip == pytest.approx(10 / 60)
    assert (cfg.command_timeout, cfg.parse_timeout) == (20.0, 2.0)
    s = cfg.suppression
    assert s.at_rcpt == "accept-and-drop"  # soft_bounce_threshold/soft_suppress_for: no-ops
    assert (s.soft_bounce_window, s.hard_suppress_for) == (2 * 86400, 365 * 86400)
    assert s.action("unknown-recipient") == "count" and s.action("rate-limited") == "ignore"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('[inbound]\nlisten = "127.0.0.1:25"\n', "inbound.listen: the inbound listener needs"),
        ('[inbound.suppression]\nat_rcpt = "drop"\n', "inbound.suppression.at_rcpt: expected one"),
        (
            '[inbound.suppression.policy]\nfull = "count"\n',
            "inbound.suppression.policy.full: unknown category",
        ),
        (
            '[inbound.suppression.policy]\npolicy = "nuke"\n',
            "inbound.suppression.policy.policy: expected one of",
        ),
        (
            '[inbound]\ncomplaints_address = "fbl"\n',
            "inbound.complaints_address: expected an address",
        ),
        ('[inbound]\nconnection_rate_per_ip = "lots"\n', "inbound.connection_rate_per_ip"),
        (
            "[inbound.suppression]\nsoft_bounce_threshold = 0\n",
            "soft_bounce_threshold: expected an integer >= 1",
        ),
        ("[inbound.suppression]\ntypo = 1\n", "inbound.suppression.typo: unknown key"),
        (
            '[inbound.suppression.policy]\nmailbox-full = "suppress"\n',
            "mailbox-full: 'suppress' would suppress for a reason that does not mean the "
            "address is dead; mailbox-full allows count | ignore",
        ),
        (
            '[inbound.suppression.policy]\ncomplaint = "suppress"\n',
            "complaint allows suppress-sender | count | ignore",
        ),
    ],
)
def test_errors_name_the_key(text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load(text)
    assert expected in str(exc.value)
