"""The owner ↔ worker link's encoding, and ``[server] workers`` parsing."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from mtaserver.config import parse_config
from mtaserver.errors import ConfigError
from mtaserver.model import PreparedMessage, PreparedRecipient
from mtaserver.workers import frames
from mtaserver.workers.frames import Frame, FrameError


def _msg(**kw: object) -> PreparedMessage:
    base: dict[str, object] = dict(
        queue_id="06H4WK9583QP5QP1",
        sender="app@example.com",
        recipients=(
            PreparedRecipient("a@dest.test"),
            PreparedRecipient("b@dest.test", b"own copy\r\n\x00\xff"),
            PreparedRecipient("c@dest.test", None, "unsubscribed"),
        ),
        data=b"Subject: x\r\n\r\nbody \xe2\x82\xac\r\n",
        user="app",
        client_ip="127.0.0.1",
        received_at=1765000000.125,
        message_id="06H4WK9583QP5QP1@mta.test",
        campaign="spring",
        not_before=1765000100.5,
    )
    base.update(kw)
    return PreparedMessage(**base)  # type: ignore[arg-type]


def test_message_round_trips_exactly() -> None:
    for msg in (_msg(), _msg(user=None, campaign=None, not_before=None, dsn=False, is_dsn=True,
                             batch_id="b1", sender="", recipients=())):  # fmt: skip
        assert frames.decode_message(frames.encode_message(msg)) == msg


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b[:-1],  # a body cut short
        lambda b: b + b"x",  # trailing bytes
        lambda b: b"\x00\x00\x00\x05{bad}" + b[9:],  # not JSON
        lambda b: b"\xff\xff\xff\xff",  # header length past the end
        lambda b: b"",
    ],
)
def test_malformed_message_is_refused(mangle: object) -> None:
    body = frames.encode_message(_msg())
    with pytest.raises(FrameError):
        frames.decode_message(mangle(body))  # type: ignore[operator]


async def test_frames_over_a_stream() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(frames.pack(Frame(frames.ENQUEUE, 7, b"abc")))
    reader.feed_data(frames.pack(Frame(frames.READY, 0)))
    reader.feed_data(b"\x00\x00")  # a cut header
    reader.feed_eof()
    assert await frames.read_frame(reader) == Frame(frames.ENQUEUE, 7, b"abc")
    assert await frames.read_frame(reader) == Frame(frames.READY, 0, b"")
    with pytest.raises(FrameError):
        await frames.read_frame(reader)
    empty = asyncio.StreamReader()
    empty.feed_eof()
    assert await frames.read_frame(empty) is None
    bad = asyncio.StreamReader()
    bad.feed_data(b"\x00\x00\x00\x01\x01\x00\x00\x00\x00")  # length below the header
    with pytest.raises(FrameError):
        await frames.read_frame(bad)


def _server(tmp_path: Path, line: str) -> int:
    return parse_config(
        f'[server]\ndata_dir = "{tmp_path}"\n{line}\n', tmp_path / "c.toml"
    ).server.workers


def test_workers_setting(tmp_path: Path) -> None:
    assert _server(tmp_path, "") == 1
    assert _server(tmp_path, "workers = 3") == 3
    assert _server(tmp_path, 'workers = "auto"') == (os.cpu_count() or 1)
    for bad, says in (("workers = 0", ">= 1"), ('workers = "all"', "'auto'"),
                      ("workers = 1.5", "integer")):  # fmt: skip
        with pytest.raises(ConfigError, match=says) as exc:
            _server(tmp_path, bad)
        assert "server.workers" in str(exc.value)
