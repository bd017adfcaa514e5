"""Cron expressions: parsing, next fire time, and daylight saving in real IANA zones.

The property tests compare ``next_fire`` with an independent oracle that walks UTC minute by
minute and applies the Vixie rules to the wall clock it sees.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtaserver.cron import CronError, fires_between, next_fire, parse, zone

BERLIN = zone("Europe/Berlin")
NEW_YORK = zone("America/New_York")


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def local(t: float, tz: object) -> str:
    return datetime.fromtimestamp(t, tz).isoformat()  # type: ignore[arg-type]


# -- parsing ------------------------------------------------------------------------------
def test_fields_names_ranges_steps_lists() -> None:
    c = parse("0,30 9-17/4 * JAN-mar,dec mon-FRI")
    assert c.minutes == {0, 30}
    assert c.hours == {9, 13, 17}
    assert c.months == {1, 2, 3, 12}
    assert c.weekdays == {1, 2, 3, 4, 5}
    assert parse("0 0 * * 7").weekdays == {0}
    assert parse("5/20 * * * *").minutes == {5, 25, 45}
    weekly, explicit = parse("@weekly"), parse("0 0 * * 0")
    assert (weekly.minutes, weekly.hours, weekly.weekdays) == (
        explicit.minutes, explicit.hours, explicit.weekdays)  # fmt: skip


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ("0 9 * *", "expected 5 fields"),
        ("60 9 * * *", "minute: 60 is outside 0-59"),
        ("0 9 * * MOX", "day-of-week: 'MOX'"),
        ("0 9 32 * *", "day-of-month: 32"),
        ("*/0 * * * *", "minute: bad step"),
        ("0 17-9 * * *", "hour: range '17-9' runs backwards"),
        ("0 0 30 2 *", "never occurs"),
        ("@reboot", "unknown macro"),
    ],
)
def test_bad_expressions_name_the_field(expr: str, names: str) -> None:
    with pytest.raises(CronError, match=names.replace("(", r"\(")):
        parse(expr)


def test_unknown_zone_is_named() -> None:
    with pytest.raises(CronError, match="Mars/Olympus"):
        zone("Mars/Olympus")


def test_dom_and_dow_both_restricted_match_either() -> None:
    c = parse("0 0 13 * FRI")  # the 13th, and every Friday (Vixie)
    fires = [
        local(t, UTC)
        for t in fires_between(
            c, ts("2026-11-01T00:00:00+00:00"), ts("2026-11-16T00:00:00+00:00"), UTC
        )
    ]  # type: ignore[arg-type]
    assert [f[:10] for f in fires] == ["2026-11-06", "2026-11-13"]
    star = parse("0 0 * * FRI")
    assert not star.day_matches(2026, 11, 12) and star.day_matches(2026, 11, 13)


def test_leap_day() -> None:
    c = parse("0 0 29 2 *")
    assert local(next_fire(c, ts("2026-03-01T00:00:00+00:00"), BERLIN), BERLIN) == (
        "2028-02-29T00:00:00+01:00"
    )


# -- daylight saving: fixed cases ------------------------------------------------------------
def test_weekly_monday_nine_across_both_changes_berlin() -> None:
    c = parse("0 9 * * MON")
    fires = fires_between(c, ts("2026-03-16T00:00:00+00:00"), ts("2026-11-03T00:00:00+00:00"),
                          BERLIN)  # fmt: skip
    walls = [datetime.fromtimestamp(t, BERLIN) for t in fires]
    assert all(w.hour == 9 and w.minute == 0 and w.weekday() == 0 for w in walls)
    assert len(walls) == len({w.date() for w in walls}) == 34
    # Before and after each change the UTC hour moves, the local hour does not.
    assert local(fires[0], BERLIN) == "2026-03-16T09:00:00+01:00"
    assert local(fires[2], BERLIN) == "2026-03-30T09:00:00+02:00"
    assert local(fires[-1], BERLIN) == "2026-11-02T09:00:00+01:00"


def test_spring_forward_fixed_job_fires_once_when_the_clocks_jump() -> None:
    c = parse("30 2 * * *")
    fires = fires_between(c, ts("2026-03-28T00:00:00+00:00"), ts("2026-03-31T00:00:00+00:00"),
                          BERLIN)  # fmt: skip
    assert [local(t, BERLIN) for t in fires] == [
        "2026-03-28T02:30:00+01:00",
        "2026-03-29T03:00:00+02:00",  # 02:30 does not exist: the first instant after the gap
        "2026-03-30T02:30:00+02:00",
    ]
    ny = fires_between(parse("15 2 * * *"), ts("2026-03-08T00:00:00+00:00"),
                       ts("2026-03-09T00:00:00+00:00"), NEW_YORK)  # fmt: skip
    assert [local(t, NEW_YORK) for t in ny] == ["2026-03-08T03:00:00-04:00"]


def test_spring_forward_several_gap_minutes_fire_once() -> None:
    c = parse("0,15,30,45 2 * * *")
    fires = fires_between(c, ts("2026-03-29T00:00:00+00:00"), ts("2026-03-29T12:00:00+00:00"),
                          BERLIN)  # fmt: skip
    assert [local(t, BERLIN) for t in fires] == ["2026-03-29T03:00:00+02:00"]


def test_fall_back_fixed_job_fires_once_at_the_first_occurrence() -> None:
    c = parse("30 1 * * *")
    fires = fires_between(c, ts("2026-11-01T00:00:00+00:00"), ts("2026-11-02T00:00:00+00:00"),
                          NEW_YORK)  # fmt: skip
    assert [local(t, NEW_YORK) for t in fires] == ["2026-11-01T01:30:00-04:00"]
    b = fires_between(parse("30 2 * * *"), ts("2026-10-24T12:00:00+00:00"),
                      ts("2026-10-26T12:00:00+00:00"), BERLIN)  # fmt: skip
    assert [local(t, BERLIN) for t in b] == [
        "2026-10-25T02:30:00+02:00",
        "2026-10-26T02:30:00+01:00",
    ]


def test_wildcard_job_follows_the_wall_clock() -> None:
    c = parse("0 * * * *")
    spring = fires_between(c, ts("2026-03-29T00:30:00+00:00"), ts("2026-03-29T02:30:00+00:00"),
                           BERLIN)  # fmt: skip
    assert [local(t, BERLIN) for t in spring] == [
        "2026-03-29T03:00:00+02:00",  # 02:00 never happened; no extra fire
        "2026-03-29T04:00:00+02:00",
    ]
    fall = fires_between(c, ts("2026-10-24T23:30:00+00:00"), ts("2026-10-25T02:30:00+00:00"),
                         BERLIN)  # fmt: skip
    assert [local(t, BERLIN) for t in fall] == [
        "2026-10-25T02:00:00+02:00",
        "2026-10-25T02:00:00+01:00",  # the repeated hour fires again
        "2026-10-25T03:00:00+01:00",
    ]


# -- properties against an oracle -------------------------------------------------------------
def oracle(expr: str, start: float, minutes: int, tz: object) -> list[float]:
    """Walk UTC minutes; fire where the wall clock matches (Vixie rules for DST)."""
    c = parse(expr)
    out: list[float] = []
    t0 = int(start // 60 * 60) + 60
    warmup = 180  # wall times passed in the 3 h before start count as fired already
    seen: set[datetime] = set()
    prev = datetime.fromtimestamp(t0 - 60 * (warmup + 1), tz).replace(tzinfo=None)  # type: ignore[arg-type]
    for i in range(-warmup, minutes):
        t = t0 + 60 * i
        wall = datetime.fromtimestamp(t, tz).replace(tzinfo=None)  # type: ignore[arg-type]
        fire = c.matches(wall) and (c.wildcard or wall not in seen)
        if not c.wildcard and wall - prev > timedelta(minutes=1):  # clocks jumped forward
            m = prev + timedelta(minutes=1)
            while m < wall:
                fire = fire or c.matches(m)
                m += timedelta(minutes=1)
        if fire and t > start:
            out.append(float(t))
        seen.add(wall)
        prev = wall
    return out


_minute = st.sampled_from(["*", "0", "30", "*/15", "5,35", "0-10/5", "59", "*/7"])
_hour = st.sampled_from(["*", "0", "1", "2", "3", "1-3", "*/2", "2,14", "9"])
_transitions = [
    ("2026-03-28T22:00:00+00:00", BERLIN),
    ("2026-10-24T22:00:00+00:00", BERLIN),
    ("2026-03-07T22:00:00+00:00", NEW_YORK),
    ("2026-10-31T22:00:00+00:00", NEW_YORK),
]


@settings(max_examples=60, deadline=None)
@given(m=_minute, h=_hour, where=st.sampled_from(_transitions), offset=st.integers(0, 600))
def test_next_fire_equals_the_oracle_around_transitions(
    m: str, h: str, where: tuple[str, object], offset: int
) -> None:
    expr = f"{m} {h} * * *"
    start = ts(where[0]) + offset * 60 + 17
    span = 36 * 60
    expected = oracle(expr, start, span, where[1])
    last = int(start // 60 * 60) + span * 60  # the oracle's last minute
    got = fires_between(parse(expr), start, last, where[1])  # type: ignore[arg-type]
    assert got == expected


@settings(max_examples=200, deadline=None)
@given(
    expr=st.sampled_from(
        [
            "0 9 * * MON",
            "*/10 * * * *",
            "0 0 1 * *",
            "15 3 * * 1-5",
            "0 12 13 * FRI",
            "@hourly",
            "30 2 * * SUN",
        ]
    ),
    start=st.integers(1_700_000_000, 2_100_000_000),
    tz=st.sampled_from(
        ["Europe/Berlin", "America/New_York", "UTC", "Australia/Lord_Howe", "Asia/Kolkata"]
    ),
)
def test_next_fire_is_later_matches_and_is_the_first(expr: str, start: int, tz: str) -> None:
    c, z = parse(expr), zone(tz)
    t = next_fire(c, start, z)
    assert t > start
    assert t % 60 == 0 or not c.wildcard
    wall = datetime.fromtimestamp(t, z).replace(tzinfo=None)
    before = datetime.fromtimestamp(t - 1, z).replace(tzinfo=None)
    # Either the wall clock matches, or the clocks just jumped over a matching minute.
    assert c.matches(wall) or (wall - before > timedelta(seconds=1) and not c.wildcard)
    # Nothing in between: asking from any earlier point in (start, t) gives the same answer.
    mid = start + (t - start) // 2
    assert next_fire(c, mid, z) == t
    assert next_fire(c, t - 1, z) == t
