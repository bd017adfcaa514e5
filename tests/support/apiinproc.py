"""The HTTP send API in this process, over a real database and a real loopback socket.

For tests that need what the daemon cannot have yet (a template source) or that watch the
event loop while a request renders. The stores, the pipeline and the intake are the real
ones; DKIM only when a signer is given (the daemon tests check signatures).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from mtaserver.api import ApiDeps, ApiServer, build_api_app
from mtaserver.auth import hash_password
from mtaserver.clock import SystemClock
from mtaserver.dkim import DkimSigner
from mtaserver.pipeline import Pipeline
from mtaserver.sendapi import Limits, StoredTemplate
from mtaserver.storage.sqlite.apikeys import SCOPES, ApiKeyStore
from mtaserver.storage.sqlite.db import Database
from mtaserver.storage.sqlite.idempotency import ApiIntake
from mtaserver.storage.sqlite.queue import Spool, new_queue_id
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.storage.sqlite.users import UserStore


class DictTemplates:
    """A TemplateSource over a dict: what the stored-templates owner will answer."""

    def __init__(self, templates: dict[str, StoredTemplate]) -> None:
        self.templates = templates

    async def get(self, template_id: str) -> StoredTemplate | None:
        return self.templates.get(template_id)


@dataclass
class InProcessApi:
    base_url: str
    key: str
    db: Database
    spool: Spool

    async def recipients(self) -> list[tuple[str, str]]:
        return await self.db.read(
            lambda c: c.execute("SELECT address, state FROM recipients ORDER BY 1").fetchall()
        )


@asynccontextmanager
async def in_process_api(
    db: Database, templates: dict[str, StoredTemplate] | None = None,
    limits: Limits | None = None, signer: DkimSigner | None = None,
) -> AsyncIterator[InProcessApi]:  # fmt: skip
    clock = SystemClock()
    spool = Spool(db)
    users = UserStore(db)
    await users.add("app", hash_password("a long password"), ["example.com"])
    keys = ApiKeyStore(db)
    _, key = await keys.create("app", frozenset(SCOPES))
    pipeline = Pipeline(spool=spool, new_queue_id=new_queue_id, hostname="mta.test",
                        signer=signer)  # fmt: skip
    deps = ApiDeps(
        keys=keys, users=users, suppressions=SuppressionStore(db), preparer=lambda: pipeline,
        intake=ApiIntake(db, spool), batches=spool, templates=DictTemplates(templates or {}),
        clock=clock, new_queue_id=new_queue_id, limits=lambda: limits or Limits(),
        idempotency_window=lambda: 86400.0, hostname="mta.test",
    )  # fmt: skip
    server = ApiServer(build_api_app(deps))
    await server.start("127.0.0.1", 0)
    try:
        yield InProcessApi(f"http://127.0.0.1:{server.port}", key, db, spool)
    finally:
        await server.stop()
