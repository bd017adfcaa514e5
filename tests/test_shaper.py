"""Shaping policy: limits, grouping, reactive rules, dead destinations (pure, fake clock)."""

from __future__ import annotations

import math
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtaserver.config.reader import Reader
from mtaserver.config.shaping import ShapingConfig, load_builtin, parse
from mtaserver.errors import ConfigError
from mtaserver.model import Disposition, RecipientResult, SmtpReply
from mtaserver.shaper import BLOCKED, Shaper
from tests.support.clock import FakeClock

BUILTIN = load_builtin()


def parse_shaping(table: dict[str, object]) -> ShapingConfig:
    return parse(Reader({"shaping": table}, "config.toml").table("shaping"))


def make(
    toml: str = "", clock: FakeClock | None = None, max_connections: int = 200
) -> tuple[Shaper, FakeClock]:
    clock = clock or FakeClock()
    cfg = parse_shaping(tomllib.loads(toml).get("shaping", {})) if toml else ShapingConfig()
    shaper = Shaper(
        cfg,
        clock,
        max_connections=max_connections,
        builtin_destinations=BUILTIN[0],
        builtin_rules=BUILTIN[1],
    )
    return shaper, clock


def result(code: int, enhanced: str | None, text: str, idx: int = 0) -> RecipientResult:
    disp = (
        Disposition.DELIVERED
        if code < 400
        else Disposition.DEFERRED
        if code < 500
        else Disposition.BOUNCED
    )
    return RecipientResult(
        idx=idx, address=f"r{idx}@x.test", disposition=disp, reply=SmtpReply(code, text, enhanced)
    )


def test_grouping_by_name_list_and_mx_suffix() -> None:
    s, _ = make()
    assert s.destination("gmail.com") == "gmail.com"
    assert s.destination("GoogleMail.com.") == "gmail.com"
    assert s.destination("hotmail.co.uk") == "outlook.com"
    assert s.destination("aol.com") == "yahoo.com"
    # a Workspace domain joins Google when every MX host is Google's
    hosts = ["aspmx.l.google.com.", "alt1.aspmx.l.google.com"]
    assert s.wants_mx("corp.example")
    assert s.destination("corp.example", hosts) == "gmail.com"
    # one foreign MX host keeps it on its own
    assert s.destination("corp.example", [*hosts, "mx.corp.example"]) == "corp.example"
    assert s.destination("notgoogle.com", ["mx.evilgoogle.com"]) == "notgoogle.com"
    assert not s.wants_mx("gmail.com")


def test_config_overrides_shipped_limits_and_adds_destinations() -> None:
    s, _ = make(
        """
        [shaping.default]
        max_connections = 3
        max_rate = "60/min"
        [shaping."gmail.com"]
        max_rate = "100/min"
        [shaping."example.org"]
        domains = ["example.net"]
        max_rate = "unlimited"
        tls = "required"
        """
    )
    g = s.limits("gmail.com")
    assert g.max_connections == 20  # shipped
    assert g.max_rate == pytest.approx(100 / 60)  # config
    other = s.limits("random.test")
    assert other.max_connections == 3 and other.max_rate == 1.0
    assert s.destination("example.net") == "example.org"
    ex = s.limits("example.org")
    assert ex.max_rate is None and ex.tls == "required" and ex.max_connections == 3


def test_builtin_can_be_turned_off() -> None:
    s, _ = make("[shaping]\nbuiltin = false\n")
    assert s.destination("googlemail.com") == "googlemail.com"
    assert s.match("gmail.com", SmtpReply(421, "rate limited", "4.7.28")) is None


def test_connection_caps_per_destination_and_global() -> None:
    s, _ = make(
        """
        [shaping.default]
        max_connections = 3
        """,
        max_connections=5,
    )
    assert [s.acquire("a.test") for _ in range(3)] == [None, None, None]
    assert s.acquire("a.test") == BLOCKED
    assert s.acquire("b.test") is None
    assert s.acquire("b.test") is None
    assert s.acquire("c.test") == BLOCKED  # global cap of 5 reached
    s.release("a.test")
    assert s.acquire("c.test") is None
    assert s.active() == 5 and s.active("a.test") == 2


def test_token_bucket_paces_messages() -> None:
    s, clock = make('[shaping.default]\nmax_rate = "10/s"\nmax_connections = 1000\n')
    assert s.acquire("a.test") is None  # burst of 1 (a tenth of a second's worth)
    wait = s.acquire("a.test")
    assert wait is not None and wait == pytest.approx(0.1)
    clock.advance(0.1)
    assert s.acquire("a.test") is None


@settings(max_examples=30, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=500),
    steps=st.lists(st.floats(min_value=0.0, max_value=0.5), min_size=1, max_size=300),
)
def test_rate_never_exceeded(rate: float, steps: list[float]) -> None:
    """Over any run, granted permits <= burst + rate * elapsed."""
    s, clock = make(f'[shaping.default]\nmax_rate = "{rate}/s"\nmax_connections = 100000\n')
    burst = max(1.0, rate / 10)
    granted = 0
    elapsed = 0.0
    for step in steps:
        clock.advance(step)
        elapsed += step
        while s.acquire("a.test") is None:
            granted += 1
        assert granted <= burst + rate * elapsed + 1e-6


def test_suspend_rule_from_shipped_data() -> None:
    s, clock = make()
    r = s.observe(
        "gmail.com",
        [result(421, "4.7.28", "Our system has detected an unusual rate of unsolicited mail")],
        connection_failed=False,
    )
    assert r.rules == ("gmail-unusual-rate",)
    assert r.suspended_until == clock.now() + 3600
    assert s.acquire("gmail.com") == pytest.approx(3600)
    clock.advance(3600)
    assert s.suspended_until("gmail.com") is None
    assert s.acquire("gmail.com") is None  # recovered by itself


def test_blocklist_5xx_is_deferred_not_bounced() -> None:
    s, _ = make()
    r = s.observe(
        "outlook.com",
        [
            result(
                550,
                "5.7.1",
                "Unfortunately, messages from [192.0.2.1] weren't sent. (S3150)",
                idx=4,
            )
        ],
        connection_failed=False,
    )
    assert r.overrides == ((4, Disposition.DEFERRED),)
    assert r.suspended_until is not None


def test_bounce_rule_fails_a_4xx_now() -> None:
    s, _ = make()
    r = s.observe(
        "yahoo.com",
        [result(421, "4.7.0", "[TSS09] All messages from 192.0.2.1 will be permanently deferred")],
        connection_failed=False,
    )
    assert r.overrides == ((0, Disposition.BOUNCED),)
    assert r.suspended_until is None


def test_greylisting_is_not_throttling() -> None:
    s, _ = make()
    assert s.match("x.test", SmtpReply(450, "Greylisted, please try again later", "4.7.1")) is None
    rule = s.match("x.test", SmtpReply(451, "Rate limited, slow down", "4.7.1"))
    assert rule is not None and rule.name == "generic-throttle"


def test_halve_rate_and_recover() -> None:
    s, clock = make(
        """
        [shaping.default]
        max_rate = "100/s"
        [[shaping.rule]]
        name = "slow"
        codes = [451]
        action = "halve_rate"
        duration = "10m"
        """
    )
    assert s.rate("a.test") == pytest.approx(100)
    complaints = [result(451, "4.7.1", "slow down", idx=i) for i in range(10)]
    s.observe("a.test", complaints, connection_failed=False)
    assert s.rate("a.test") == pytest.approx(50)  # once per attempt, not per recipient
    s.observe("a.test", complaints, connection_failed=False)
    assert s.rate("a.test") == pytest.approx(50)  # cooldown
    clock.advance(61)
    s.observe("a.test", complaints, connection_failed=False)
    assert s.rate("a.test") == pytest.approx(25)
    clock.advance(600)
    assert s.rate("a.test") == pytest.approx(50)
    clock.advance(600)
    assert s.rate("a.test") == pytest.approx(100)
    clock.advance(6000)
    assert s.rate("a.test") == pytest.approx(100)


def test_halving_an_unlimited_destination_uses_its_observed_rate() -> None:
    s, clock = make(
        """
        [shaping.default]
        max_connections = 100000
        [[shaping.rule]]
        name = "slow"
        codes = [451]
        action = "halve_rate"
        duration = "5m"
        """
    )
    for _ in range(60):
        for _ in range(20):
            assert s.acquire("a.test") is None
            s.release("a.test")
        clock.advance(1)
    assert s.rate("a.test") is None
    s.observe("a.test", [result(451, None, "x")], connection_failed=False)
    assert s.rate("a.test") == pytest.approx(10, rel=0.1)
    clock.advance(300)
    assert s.rate("a.test") is None  # back to unlimited


def test_dead_destination_backoff_grows_and_resets() -> None:
    s, clock = make(
        """
        [shaping.default]
        dead_after = 3
        dead_backoff = "1m"
        dead_backoff_max = "3m"
        """
    )
    fail = [result(421, "4.4.1", "connection refused")]

    def fail_n(n: int) -> float | None:
        until = None
        for _ in range(n):
            until = s.observe("dead.test", fail, connection_failed=True).suspended_until
        return until

    assert fail_n(2) is None
    t = clock.now()
    assert fail_n(1) == t + 60
    clock.advance(60)
    assert fail_n(3) == clock.now() + 120
    clock.advance(120)
    assert fail_n(3) == clock.now() + 180  # capped
    clock.advance(180)
    # a successful connection resets the back-off
    s.observe("dead.test", [result(250, "2.0.0", "ok")], connection_failed=False)
    assert fail_n(3) == clock.now() + 60


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[shaping."gmail.com"]\nmax_rate = "100 per min"',
            'shaping."gmail.com".max_rate: expected N/unit',
        ),
        ("[shaping.default]\nmax_conections = 3", "shaping.default.max_conections: unknown key"),
        ('[shaping]\nmax_lifetime = "5 days"', "shaping.max_lifetime: expected a duration"),
        ('[[shaping.rule]]\nname = "x"\naction = "explode"\ncodes=[421]', "shaping.rule[0].action"),
        ('[[shaping.rule]]\nname = "x"\naction = "suspend"', "shaping.rule[0]: a rule needs"),
        ('[[shaping.rule]]\nname = "x"\naction = "suspend"\ntext = "("', "shaping.rule[0].text"),
        ('[shaping."a.test"]\ntls = "maybe"', 'shaping."a.test".tls'),
        ("[shaping]\nretry_schedule = []", "shaping.retry_schedule"),
        ('[shaping]\nretry_schedule = ["5m", "soon"]', "shaping.retry_schedule.1"),
    ],
)
def test_config_errors_name_the_key(toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_shaping(tomllib.loads(toml)["shaping"])
    assert message in str(exc.value)


def test_retry_keys_parse() -> None:
    cfg = parse_shaping(
        {
            "retry_schedule": ["1m", "2m"],
            "retry_every": "1h",
            "max_lifetime": "2d",
            "delay_warning": "4h",
            "poll_interval": "50ms",
        }
    )
    assert cfg.retry.schedule == (60, 120)
    assert cfg.retry.every == 3600 and cfg.retry.max_lifetime == 2 * 86400
    assert cfg.retry.delay_warning == 4 * 3600
    assert cfg.scheduler.poll_interval == 0.05
    assert math.isclose(parse_shaping({}).retry.max_lifetime, 5 * 86400)


def test_shipped_rules_all_parse_and_have_providers() -> None:
    dests, rules = BUILTIN
    names = {d.name for d in dests}
    assert {"gmail.com", "outlook.com", "yahoo.com"} <= names
    for rule in rules:
        assert all(d in names for d in rule.destinations), rule.name


def test_reconfigure_keeps_counters_and_suspensions() -> None:
    s, clock = make("[shaping.default]\nmax_connections = 2\n")
    assert s.acquire("a.test") is None and s.acquire("a.test") is None
    assert s.acquire("a.test") == BLOCKED
    s.suspend("b.test", clock.now() + 60, "test")
    cfg = parse_shaping(tomllib.loads('[default]\nmax_connections = 3\nmax_rate = "1/s"\n'))
    s.reconfigure(cfg, max_connections=200)
    assert s.limits("a.test").max_connections == 3
    assert s.acquire("a.test") is None  # the two taken before still count: third slot
    assert s.acquire("a.test") == BLOCKED
    assert s.rate("a.test") == 1.0
    assert s.suspended_until("b.test") == clock.now() + 60
