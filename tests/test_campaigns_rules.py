"""The campaign life cycle shared by the CLI and /v1/campaigns: each action from each status
(allowed ones give the status and next fire, the rest a CampaignStateError naming the
status), a cron start's first fire in its zone, and definitions refused by field."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from mtaserver.campaigns import ACTIONS, CampaignStateError, definition, parse_when, transition
from mtaserver.contacts import ContactError
from mtaserver.cron import CronError

NOW = datetime(2026, 3, 27, 12, 0, tzinfo=UTC).timestamp()  # a Friday, before DST ends
ALLOWED = {
    ("start", "draft"), ("pause", "scheduled"), ("pause", "running"), ("resume", "paused"),
    ("cancel", "draft"), ("cancel", "scheduled"), ("cancel", "running"), ("cancel", "paused"),
}  # fmt: skip


def go(action: str, status: str, **kw: Any) -> tuple[str, float | None]:
    args: dict[str, Any] = {"schedule": "once", "send_at": None, "cron": None, "tz": None,
                            "next_run_at": 50.0, "paused_run": False, "now": NOW, **kw}  # fmt: skip
    return transition(action, "c", status, **args)


@pytest.mark.parametrize("action", ACTIONS)
@pytest.mark.parametrize("status", ["draft", "scheduled", "running", "paused", "done", "cancelled"])
def test_every_action_from_every_status(action: str, status: str) -> None:
    if (action, status) in ALLOWED:
        assert go(action, status)[0] in ("scheduled", "running", "paused", "cancelled")
    else:
        with pytest.raises(CampaignStateError, match=status):
            go(action, status)


def test_results() -> None:
    assert go("start", "draft") == ("scheduled", NOW)
    assert go("start", "draft", send_at=99.0) == ("scheduled", 99.0)
    berlin = go("start", "draft", schedule="cron", cron="0 9 * * MON", tz="Europe/Berlin")
    assert berlin == ("scheduled", datetime(2026, 3, 30, 7, 0, tzinfo=UTC).timestamp())  # CEST
    assert go("pause", "running") == ("paused", 50.0)
    assert go("resume", "paused", paused_run=True) == ("running", 50.0)
    assert go("resume", "paused") == ("scheduled", 50.0)
    assert go("resume", "paused", next_run_at=None) == ("done", None)  # nothing left to send
    assert go("cancel", "running") == ("cancelled", None)


def test_definitions() -> None:
    d = definition("spring", "promo", "News@Example.com", segment='{"in_list": "news"}',
                   cron="@daily")  # fmt: skip
    assert (d.audience_kind, d.schedule, d.tz, d.from_email) == (
        "segment", "cron", "UTC", "news@example.com")  # fmt: skip
    assert parse_when("2030-01-07T09:00:00+01:00") == 1894003200.0
    cases: list[tuple[dict[str, Any], str]] = [
        ({}, "audience"), ({"list_name": "a", "segment": "b"}, "audience"),
        ({"list_name": "a", "send_at": "2030-01-07T09:00:00"}, "send_at"),  # no offset
        ({"list_name": "a", "send_at": True}, "send_at"),
        ({"list_name": "a", "tz": "UTC"}, "tz"),
        ({"list_name": "a", "cron": "@daily", "send_at": 1}, "cron"),
    ]  # fmt: skip
    for kw, field in cases:
        with pytest.raises(ContactError) as exc:
            definition("spring", "promo", "a@example.com", **kw)
        assert exc.value.field == field, kw
    with pytest.raises(CronError, match="Mars/X"):
        definition("s", "t", "a@example.com", list_name="a", cron="@daily", tz="Mars/X")
    with pytest.raises(ContactError, match="campaign name"):
        definition("no spaces", "t", "a@example.com", list_name="a")
