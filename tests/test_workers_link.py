"""The worker's end of the link never turns a missing or refused commit into success.

A scripted owner on the other end of a real socketpair: it answers OK, refuses (a rate
limit, a full disk), stays silent, or goes away. What the session would answer is the
submission handler's mapping of what ``enqueue`` raised: 250 only after OK.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import pytest

from mtaserver.errors import StorageError
from mtaserver.model import PreparedMessage, PreparedRecipient
from mtaserver.prepare import PrepareError
from mtaserver.smtpd.replies import storage_reply
from mtaserver.workers import frames
from mtaserver.workers.child import OwnerLink
from mtaserver.workers.frames import Frame

MSG = PreparedMessage(
    queue_id="06H4WK9583QP5QP1", sender="app@example.com",
    recipients=(PreparedRecipient("a@dest.test"),), data=b"Subject: x\r\n\r\nhi\r\n",
    user="app", client_ip="127.0.0.1", received_at=1765000000.0,
)  # fmt: skip

Owner = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


async def _link(owner: Owner, ack_timeout: float = 5.0) -> AsyncIterator[OwnerLink]:
    a, b = socket.socketpair()
    r1, w1 = await asyncio.open_unix_connection(sock=a)
    r2, w2 = await asyncio.open_unix_connection(sock=b)
    link = OwnerLink(r1, w1, ack_timeout=ack_timeout)
    reading = asyncio.create_task(link.run())
    serving = asyncio.create_task(owner(r2, w2))
    try:
        yield link
    finally:
        serving.cancel()
        w2.close()
        await link.aclose()
        await asyncio.wait_for(reading, 5)


def _answering(answer: Callable[[Frame], Frame | None]) -> Owner:
    async def owner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while (frame := await frames.read_frame(reader)) is not None:
            assert frame.kind == frames.ENQUEUE
            assert frames.decode_message(frame.body) == MSG
            reply = answer(frame)
            if reply is None:
                writer.close()
                return
            writer.write(frames.pack(reply))

    return owner


def _err(kind: str, reply: str = "") -> Callable[[Frame], Frame]:
    return lambda f: Frame(
        frames.ERR, f.request, frames.encode_json({"kind": kind, "reply": reply})
    )


async def _enqueue(owner: Owner, ack_timeout: float = 5.0) -> BaseException | None:
    async for link in _link(owner, ack_timeout):
        try:
            await link.enqueue(MSG)
        except Exception as exc:
            return exc
    return None


async def test_ok_after_the_owner_acks() -> None:
    assert await _enqueue(_answering(lambda f: Frame(frames.OK, f.request))) is None


async def test_many_sessions_share_the_link() -> None:
    async for link in _link(_answering(lambda f: Frame(frames.OK, f.request))):
        await asyncio.gather(*(link.enqueue(MSG) for _ in range(50)))


async def test_rate_limit_refusal_is_the_owners_reply() -> None:
    exc = await _enqueue(_answering(_err("prepare", "451 4.7.1 Message rate limit exceeded")))
    assert isinstance(exc, PrepareError) and exc.reply.startswith("451 4.7.1")


async def test_full_disk_in_the_owner_is_452() -> None:
    exc = await _enqueue(_answering(_err("full")))
    assert isinstance(exc, StorageError) and storage_reply(exc).startswith("452 4.3.1")


@pytest.mark.parametrize("kind", ["storage", "prepare"])  # a "prepare" without a reply too
async def test_other_refusals_are_451(kind: str) -> None:
    exc = await _enqueue(_answering(_err(kind)))
    assert exc is not None and storage_reply(exc).startswith("451 4.3.0")


async def test_owner_gone_is_451() -> None:
    exc = await _enqueue(_answering(lambda f: None))  # closes without answering
    assert isinstance(exc, StorageError) and storage_reply(exc).startswith("451 4.3.0")


async def test_silent_owner_is_451_after_the_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.Event().wait()

    loop = asyncio.get_running_loop()
    started = loop.time()
    exc = await _enqueue(silent, ack_timeout=0.3)
    assert isinstance(exc, StorageError) and "did not commit" in str(exc)
    assert storage_reply(exc).startswith("451 4.3.0")
    assert loop.time() - started < 3


async def test_after_the_link_closed_nothing_is_sent() -> None:
    async for link in _link(_answering(lambda f: None)):
        with pytest.raises(StorageError):
            await link.enqueue(MSG)
        await asyncio.wait_for(link.closed.wait(), 5)
        with pytest.raises(StorageError, match="unreachable"):
            await link.enqueue(MSG)
