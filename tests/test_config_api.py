"""``[api]``: the HTTP send API's listener and limits; each mistake names its key."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtaserver.config import ConfigError, parse_config


def load(text: str):
    return parse_config(text, Path("/tmp/config.toml"))


def test_defaults_are_sendgrids_limits_and_off() -> None:
    api = load("").api
    assert api.listen is None and not api.tls
    assert api.max_personalizations == 1000 and api.max_recipients == 1000
    assert api.max_body == 30 * 1024 * 1024
    assert api.max_send_ahead == 72 * 3600 and api.idempotency_window == 24 * 3600


def test_every_key_parses() -> None:
    api = load(
        "[api]\nlisten = '127.0.0.1:8025'\nmax_personalizations = 50\nmax_recipients = 70\n"
        "max_body = '2MiB'\nmax_send_ahead = '1d'\nidempotency_window = '2h'\n"
        "max_concurrent_renders = 4\n"
    ).api
    assert api.listen == ("127.0.0.1", 8025)
    assert (api.max_personalizations, api.max_recipients, api.max_body) == (50, 70, 2 * 2**20)
    assert (api.max_send_ahead, api.idempotency_window, api.max_concurrent_renders) == (
        86400,
        7200,
        4,
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("listen = 'x'", "config.toml: api.listen: expected 'host:port', got 'x'"),
        ("max_personalizations = 0", "config.toml: api.max_personalizations: expected an integer >= 1"),
        ("max_body = 'huge'", "config.toml: api.max_body: expected a size like"),
        ("max_body = '10b'", "config.toml: api.max_body: must be at least 1KiB"),
        ("max_send_ahead = 5", "config.toml: api.max_send_ahead: expected a duration"),
        ("idempotency_window = '5s'", "config.toml: api.idempotency_window: must be at least 1m"),
        ("listn = '127.0.0.1:1'", "config.toml: api.listn: unknown key"),
        ("listen = '0.0.0.0:8025'", "config.toml: api.listen: 0.0.0.0 is not a loopback address"),
        ("listen = '127.0.0.1:8025'\ntls = true", "config.toml: api.tls: needs [tls] cert and key"),
    ],
)  # fmt: skip
def test_mistakes_name_the_key(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load("[api]\n" + text + "\n")
    assert str(exc.value).startswith(message), str(exc.value)
