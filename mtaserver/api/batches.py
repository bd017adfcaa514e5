"""``/v3/mail/batch`` and ``/v3/user/scheduled_sends``: SendGrid's batch endpoints.

A batch id is created for the key's user, then given as ``batch_id`` in mail/send; a
scheduled-send status of ``cancel`` makes the batch's unsent recipients final (never
sent), ``pause`` holds them, and removing the status (``DELETE``) lets paused ones go at
their ``send_at``. A batch of another user is answered as if it did not exist.
"""

from __future__ import annotations

import json

from mtaserver.api.deps import ApiDeps, KeyInfo
from mtaserver.api.errors import Answer, error, json_answer
from mtaserver.log import get_logger, kv
from mtaserver.storage.sqlite.queue import BatchInfo

log = get_logger("api")
STATUSES = ("cancel", "pause")
INVALID_BATCH = "invalid batch id"


def _view(b: BatchInfo) -> dict[str, str | None]:
    return {"batch_id": b.batch_id, "status": b.status}


def _json_object(body: bytes) -> dict[str, object] | Answer:
    try:
        value = json.loads(body or b"{}")
    except (ValueError, RecursionError):
        return error(400, "Bad Request")
    if not isinstance(value, dict):
        return error(400, "The request body must be a JSON object.")
    return value


class BatchApi:
    def __init__(self, deps: ApiDeps) -> None:
        self._d = deps

    async def _own(self, key: KeyInfo, batch_id: str) -> BatchInfo | None:
        b = await self._d.batches.batch(batch_id)
        return b if b is not None and b.user == key.user else None

    async def create(self, key: KeyInfo) -> Answer:
        b = await self._d.batches.create_batch(key.user)
        log.info(kv(event="api_batch_created", user=key.user, batch_id=b.batch_id))
        return json_answer({"batch_id": b.batch_id}, 201)

    async def validate(self, key: KeyInfo, batch_id: str) -> Answer:
        if await self._own(key, batch_id) is None:
            return error(400, INVALID_BATCH, "batch_id")
        return json_answer({"batch_id": batch_id})

    async def list(self, key: KeyInfo, batch_id: str | None = None) -> Answer:
        if batch_id is not None:
            b = await self._own(key, batch_id)
            return json_answer([_view(b)] if b is not None and b.status else [])
        return json_answer([_view(b) for b in await self._d.batches.list_batches(key.user)])

    async def set_status(
        self, key: KeyInfo, body: bytes, batch_id: str | None, *, created: bool
    ) -> Answer:
        """POST (``created``: the batch id is in the body) or PATCH (in the path)."""
        data = _json_object(body)
        if isinstance(data, Answer):
            return data
        if batch_id is None:
            raw = data.get("batch_id")
            if not isinstance(raw, str) or not raw:
                return error(400, "The batch_id is required and must be a string.", "batch_id")
            batch_id = raw
        status = data.get("status")
        if status not in STATUSES:
            return error(400, "The status must be either 'cancel' or 'pause'.", "status")
        assert isinstance(status, str)
        b = await self._own(key, batch_id)
        if b is None:
            return error(400 if created else 404, INVALID_BATCH, "batch_id")
        return await self._apply(key, b, status, 201 if created else 204)

    async def delete(self, key: KeyInfo, batch_id: str) -> Answer:
        b = await self._own(key, batch_id)
        if b is None or b.status is None:
            return error(404, INVALID_BATCH, "batch_id")
        return await self._apply(key, b, None, 204)

    async def _apply(self, key: KeyInfo, b: BatchInfo, status: str | None, code: int) -> Answer:
        change = await self._d.batches.set_batch_status(b.batch_id, status)
        if change is None:
            return error(404, INVALID_BATCH, "batch_id")
        log.info(kv(event="api_batch_status", user=key.user, batch_id=b.batch_id,
                    status=status or "none", cancelled=change.cancelled, held=change.held,
                    released=change.released))  # fmt: skip
        if code == 204:
            return Answer(204)
        return json_answer({"batch_id": b.batch_id, "status": status}, code)
