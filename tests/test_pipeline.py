"""Submission → cleanup → tracking → DKIM (each copy) → spool, with the real spool."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mtaserver.config import parse_config
from mtaserver.config.submission import AuthThrottleConfig
from mtaserver.errors import ConfigError
from mtaserver.model import PreparedRecipient, Submission
from mtaserver.pipeline import Pipeline, TrackingOptions, tracking_options
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.queue import Spool, new_queue_id


class Tracker:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[str, ...], bool, bool, bool]] = []

    async def personalize(
        self, queue_id: str, data: bytes, recipients: tuple[str, ...], opens: bool,
        clicks: bool, unsubscribe: bool, *, sender: str = "",
    ) -> tuple[PreparedRecipient, ...]:  # fmt: skip
        self.calls.append((queue_id, recipients, opens, clicks, unsubscribe))
        return tuple(
            PreparedRecipient(r, data + f"token {queue_id}/{i}\r\n".encode() if i else None)
            for i, r in enumerate(recipients)
        )


class Signer:
    async def sign(self, data: bytes, *_split: object) -> bytes:
        return b"DKIM-Signature: v=1; fake\r\n" + data


def submission(data: bytes) -> Submission:
    return Submission(
        sender="alice@example.com", recipients=("a@d.example", "b@d.example"), data=data,
        client_ip="192.0.2.1", helo="c.test", user="alice", tls_version="TLSv1.3",
        listener="submission", received_at=1_800_000_000.0,
    )  # fmt: skip


async def test_pipeline_tracks_signs_each_copy_and_queues(db: Database) -> None:
    tracker = Tracker()
    pipeline = Pipeline(
        spool=Spool(db), new_queue_id=new_queue_id, hostname="mta.test", tracker=tracker,
        signer=Signer(),
    )  # fmt: skip
    data = (
        b"From: alice@example.com\r\nX-Mtaserver-Track: opens clicks\r\n"
        b"X-Mtaserver-Campaign: spring\r\n\r\nhello\r\n"
    )
    queue_id = await pipeline.submit(submission(data))
    assert tracker.calls == [(queue_id, ("a@d.example", "b@d.example"), True, True, False)]

    def rows(conn: sqlite3.Connection) -> tuple[tuple[bytes, str], list[bytes | None]]:
        msg = conn.execute("SELECT body, campaign FROM messages WHERE id=?", (queue_id,)).fetchone()
        copies = [r[0] for r in conn.execute(
            "SELECT body FROM recipients WHERE queue_id=? ORDER BY idx", (queue_id,))]  # fmt: skip
        return msg, copies

    (body, campaign), copies = await db.read(rows)
    assert campaign == "spring"
    assert body.startswith(b"DKIM-Signature: v=1; fake\r\nReceived: ")
    assert b"X-Mtaserver" not in body
    assert copies[0] is None
    assert copies[1] is not None and copies[1].startswith(b"DKIM-Signature")
    assert copies[1].endswith(f"token {queue_id}/1\r\n".encode())


async def test_no_tracking_header_uses_default_and_none_disables(db: Database) -> None:
    tracker = Tracker()
    pipeline = Pipeline(
        spool=Spool(db), new_queue_id=new_queue_id, hostname="mta.test", tracker=tracker,
        tracking_defaults=lambda user: TrackingOptions(opens=user == "alice"),
    )  # fmt: skip
    await pipeline.submit(submission(b"From: alice@example.com\r\n\r\nx\r\n"))
    await pipeline.submit(
        submission(b"From: alice@example.com\r\nX-Mtaserver-Track: none\r\n\r\nx\r\n")
    )
    assert len(tracker.calls) == 1 and tracker.calls[0][2:] == (True, False, False)
    assert tracking_options("all", TrackingOptions()) == TrackingOptions(True, True, True)
    assert tracking_options("unsubscribe", TrackingOptions()).unsubscribe


def test_config_keys(tmp_path: Path) -> None:
    cfg = parse_config(
        "[submission]\nuser_rate = '100/min'\nuser_burst = 20\nmax_mime_depth = 10\n"
        "[submission.auth]\ndelay_after = 2\ndelay = '500ms'\nlockout_after = 5\n"
        "window = '10m'\n",
        tmp_path / "config.toml",
    )
    sub = cfg.submission
    assert sub.user_rate == pytest.approx(100 / 60) and sub.user_burst == 20
    assert sub.max_mime_depth == 10
    assert sub.auth == AuthThrottleConfig(
        delay_after=2, delay=0.5, max_delay=8.0, lockout_after=5, window=600.0
    )
    with pytest.raises(ConfigError, match=r"submission\.auth\.lockout: unknown key"):
        parse_config("[submission.auth]\nlockout = 5\n", tmp_path / "config.toml")
