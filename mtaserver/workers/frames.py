"""The owner ↔ worker link: length-prefixed frames and an explicit PreparedMessage encoding.

A frame is ``u32 length | u8 kind | u32 request id | body``. A message travels as
``u32 header length | JSON header | data | each recipient's own copy``: the JSON carries
the scalar fields and the byte lengths, the bodies follow raw, so nothing is base64'd and
nothing is unpickled. Both ends are our processes; the decoder still checks every length.
"""

from __future__ import annotations

import asyncio
import json
import struct
from dataclasses import dataclass
from typing import Any

from mtaserver.model import PreparedMessage, PreparedRecipient

# Worker → owner
ENQUEUE = 1  # body: an encoded PreparedMessage; answered OK or ERR with the same id
READY = 2  # the worker's listeners are bound (once, after start)
OBSERVE = 3  # body: JSON [method, argument] for the owner's metrics; not answered
# body: JSON ["locked" | "failed" | "succeeded", ip, user]: the daemon's one AUTH failure
# count; answered OK with the JSON result (request id 0: not answered)
THROTTLE = 4
# body: JSON {"ok": bool, "error": str}: the answer to a SIGHUP, applied or not (a failed
# reload keeps the worker's previous config whole)
RELOADED = 5
CLOSED = 6  # the worker's listeners are closed (it is stopping): no new connection
# Owner → worker
OK = 10
ERR = 11  # body: JSON {"kind": "prepare" | "full" | "storage", "reply": "451 ..."}

MAX_FRAME = 1 << 31  # a message with per-recipient copies can be large; the u32 caps it
_HEAD = struct.Struct(">IBI")
_U32 = struct.Struct(">I")


class FrameError(ValueError):
    """The peer sent something that is not a frame of ours: the link is dropped."""


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int
    request: int
    body: bytes = b""


def pack(frame: Frame) -> bytes:
    return _HEAD.pack(len(frame.body) + 5, frame.kind, frame.request) + frame.body


async def read_frame(reader: asyncio.StreamReader) -> Frame | None:
    """The next frame, or None at a clean end of stream."""
    try:
        head = await reader.readexactly(_HEAD.size)
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise FrameError("link closed inside a frame header") from None
        return None
    length, kind, request = _HEAD.unpack(head)
    if length < 5 or length > MAX_FRAME:
        raise FrameError(f"bad frame length {length}")
    try:
        body = await reader.readexactly(length - 5)
    except asyncio.IncompleteReadError:
        raise FrameError("link closed inside a frame") from None
    return Frame(kind, request, body)


def encode_message(msg: PreparedMessage) -> bytes:
    header = {
        "q": msg.queue_id,
        "s": msg.sender,
        "u": msg.user,
        "ip": msg.client_ip,
        "t": msg.received_at,
        "mid": msg.message_id,
        "c": msg.campaign,
        "dsn": msg.dsn,
        "isdsn": msg.is_dsn,
        "nb": msg.not_before,
        "b": msg.batch_id,
        "n": len(msg.data),
        "r": [
            [r.address, -1 if r.data is None else len(r.data), r.suppressed] for r in msg.recipients
        ],
    }
    head = json.dumps(header, separators=(",", ":")).encode()
    parts = [_U32.pack(len(head)), head, msg.data]
    parts.extend(r.data for r in msg.recipients if r.data is not None)
    return b"".join(parts)


def decode_message(body: bytes) -> PreparedMessage:
    """Raises FrameError on anything malformed."""
    try:
        (hlen,) = _U32.unpack_from(body)
        h: dict[str, Any] = json.loads(body[4 : 4 + hlen])
        pos = 4 + hlen
        n = int(h["n"])
        data = body[pos : pos + n]
        pos += n
        recipients = []
        for address, size, suppressed in h["r"]:
            own = None
            if size >= 0:
                own = body[pos : pos + size]
                pos += size
                if len(own) != size:
                    raise FrameError("recipient copy cut short")
            recipients.append(PreparedRecipient(str(address), own, suppressed))
        if len(data) != n or pos != len(body):
            raise FrameError("message lengths do not add up")
        return PreparedMessage(
            queue_id=str(h["q"]),
            sender=str(h["s"]),
            recipients=tuple(recipients),
            data=data,
            user=h["u"],
            client_ip=str(h["ip"]),
            received_at=float(h["t"]),
            message_id=str(h["mid"]),
            campaign=h["c"],
            dsn=bool(h["dsn"]),
            is_dsn=bool(h["isdsn"]),
            not_before=h["nb"],
            batch_id=h["b"],
        )
    except FrameError:
        raise
    except (ValueError, KeyError, TypeError, struct.error) as exc:
        raise FrameError(f"bad message frame: {type(exc).__name__}") from None


def encode_json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def decode_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:
        raise FrameError(f"bad JSON frame: {exc}") from None
