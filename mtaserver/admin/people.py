"""Admin endpoints about people: submission users, the suppression list, data subject
requests (export/erase). Each calls the implementation its CLI twin calls."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any

from aiohttp import web

from mtaserver import privacy
from mtaserver.admin.deps import AdminDeps, UserAdmin, UserRecordView
from mtaserver.admin.server import ApiError, int_param, json_body, json_response, str_field
from mtaserver.config.units import parse_duration
from mtaserver.storage.sqlite.queue import BodyCodec
from mtaserver.storage.sqlite.suppressions import SuppressionStore
from mtaserver.suppression import Suppression, valid_address


class PeopleApi:
    def __init__(self, deps: AdminDeps) -> None:
        self.d = deps

    def register(self, app: web.Application, p: str) -> None:
        r = app.router
        if self.d.suppressions is not None:
            r.add_get(f"{p}/suppressions", self.suppressions_list, allow_head=False)
            r.add_post(f"{p}/suppressions", self.suppressions_add)
            r.add_get(f"{p}/suppressions/check", self.suppressions_check, allow_head=False)
            r.add_delete(f"{p}/suppressions/{{address}}", self.suppressions_remove)
        if self.d.codec is not None:
            r.add_get(f"{p}/privacy/export", self.privacy_export, allow_head=False)
            r.add_post(f"{p}/privacy/erase", self.privacy_erase)
        if self.d.users is not None:
            r.add_get(f"{p}/users", self.users_list, allow_head=False)
            r.add_post(f"{p}/users", self.users_add)
            r.add_delete(f"{p}/users/{{name}}", self.users_remove)

    # -- users -----------------------------------------------------------------------------
    def _users(self) -> UserAdmin:
        assert self.d.users is not None  # routes exist only when wired
        return self.d.users

    @staticmethod
    def _user_json(u: UserRecordView) -> dict[str, Any]:
        return {"name": u.name, "domains": list(u.domains), "created_at": u.created_at,
                "updated_at": u.updated_at}  # fmt: skip

    async def users_list(self, request: web.Request) -> web.Response:
        users = await self._users().list()
        return json_response({"users": [self._user_json(u) for u in users]})

    async def users_add(self, request: web.Request) -> web.Response:
        store = self._users()
        body = await json_body(request)
        name = str_field(body, "name")
        password = body.get("password")
        domains = body.get("domains")
        if not isinstance(password, str) or len(password) < self.d.min_password:
            raise ApiError(400, f"password: at least {self.d.min_password} characters")
        if (
            not isinstance(domains, list)
            or not domains
            or not all(isinstance(x, str) for x in domains)
        ):
            raise ApiError(400, "domains: expected a non-empty list of domain names")
        assert name is not None and self.d.hash_password is not None
        hashed = await asyncio.to_thread(self.d.hash_password, password)
        await store.add(name, hashed, domains)
        wanted = name.strip().lower()
        for u in await store.list():
            if u.name == wanted:
                return json_response(self._user_json(u), 201)
        raise ApiError(500, "user vanished after creation")  # pragma: no cover

    async def users_remove(self, request: web.Request) -> web.Response:
        store = self._users()
        name = request.match_info["name"].strip().lower()
        if not any(u.name == name for u in await store.list()):
            raise ApiError(404, f"no user {name}")
        await store.remove(name)
        return json_response({"name": name, "removed": True})

    # -- suppressions ----------------------------------------------------------------------
    def _suppressions(self) -> SuppressionStore:
        assert self.d.suppressions is not None  # routes exist only when wired
        return self.d.suppressions

    async def suppressions_list(self, request: web.Request) -> web.Response:
        limit = int_param(request, "limit", 1000, 1, 10000)
        expired = request.query.get("include_expired", "false")
        if expired not in ("true", "false"):
            raise ApiError(400, "include_expired: expected true or false")
        address = request.query.get("address") or None
        rows = await self._suppressions().list(
            valid_address(address) if address else None,
            limit=limit,
            include_expired=expired == "true",
        )
        return json_response({"suppressions": [asdict(x) for x in rows]})

    async def suppressions_add(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        address = valid_address(str_field(body, "address") or "")
        reason = str_field(body, "reason", required=False) or "manual"
        scope = str_field(body, "scope", required=False)
        expires = None
        if (duration := str_field(body, "for", required=False)) is not None:
            try:
                expires = self.d.clock.now() + parse_duration(duration)
            except ValueError:
                raise ApiError(
                    400, f"for: expected a duration like '30d', got {duration!r}"
                ) from None
        entry: Suppression = await self._suppressions().add(
            address, reason, scope=scope, source="manual", expires_at=expires
        )
        return json_response(asdict(entry), 201)

    async def suppressions_check(self, request: web.Request) -> web.Response:
        address = valid_address(request.query.get("address", ""))
        entry = await self._suppressions().check(
            address, request.query.get("sender_domain") or None
        )
        return json_response(
            {
                "address": address.strip().strip("<>").lower(),
                "suppressed": entry is not None,
                "entry": asdict(entry) if entry is not None else None,
            }
        )

    async def suppressions_remove(self, request: web.Request) -> web.Response:
        address = valid_address(request.match_info["address"])
        scope = request.query.get("scope")
        n = await self._suppressions().remove(address, scope or None, all_scopes=scope is None)
        if n == 0:
            raise ApiError(404, f"{address.lower()} is not suppressed")
        return json_response({"address": address.strip().strip("<>").lower(), "removed": n})

    # -- privacy ---------------------------------------------------------------------------
    def _codec(self) -> BodyCodec:
        assert self.d.codec is not None  # routes exist only when wired
        return self.d.codec()

    async def privacy_export(self, request: web.Request) -> web.Response:
        address = valid_address(request.query.get("address", ""))
        bodies = request.query.get("bodies", "true")
        if bodies not in ("true", "false"):
            raise ApiError(400, "bodies: expected true or false")
        data = await privacy.export(
            self.d.privacy, address, codec=self._codec(), bodies=bodies == "true"
        )
        return json_response(data)

    async def privacy_erase(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        address = valid_address(str_field(body, "address") or "")
        suppress = body.get("suppress", False)
        if not isinstance(suppress, bool):
            raise ApiError(400, "suppress: expected true or false")
        result = await privacy.erase(
            self.d.privacy, address, codec=self._codec(), suppress=suppress
        )
        return json_response(result.as_dict())
