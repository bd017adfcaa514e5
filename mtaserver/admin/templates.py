"""Admin endpoints for stored templates (the send API's ``template_id``).

Each calls ``TemplateStore``, the implementation ``mtaserver template`` calls too, so a
template put here is compiled (and refused on a syntax error) exactly as from the CLI.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from mtaserver.admin.server import ApiError, json_body, json_response, str_field
from mtaserver.storage.sqlite.templates import TemplateInfo, TemplateStore, TemplateVersion


def _info_json(t: TemplateInfo) -> dict[str, Any]:
    return {"id": t.template_id, "name": t.name, "active_version": t.active_version,
            "versions": len(t.versions), "created_at": t.created_at,
            "updated_at": t.updated_at}  # fmt: skip


def _version_json(v: TemplateVersion, active: int) -> dict[str, Any]:
    return {"version": v.version, "active": v.version == active, "subject": v.subject,
            "html": v.html, "text": v.text, "created_at": v.created_at}  # fmt: skip


def _parts(body: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    subject = str_field(body, "subject", required=False)
    html = str_field(body, "html", required=False)
    text = str_field(body, "text", required=False)
    return subject, html, text


class TemplatesApi:
    def __init__(self, store: TemplateStore) -> None:
        self.store = store

    def register(self, app: web.Application, p: str) -> None:
        r = app.router
        r.add_get(f"{p}/templates", self.list, allow_head=False)
        r.add_post(f"{p}/templates", self.create)
        r.add_get(f"{p}/templates/{{ref}}", self.show, allow_head=False)
        r.add_delete(f"{p}/templates/{{ref}}", self.delete)
        r.add_post(f"{p}/templates/{{ref}}/versions", self.add_version)
        r.add_post(f"{p}/templates/{{ref}}/versions/{{version}}/activate", self.activate)

    async def _detail(self, ref: str, status: int = 200) -> web.Response:
        found = await self.store.versions(ref)
        if found is None:
            raise ApiError(404, f"no template {ref}")
        info, versions = found
        out = _info_json(info)
        out["versions"] = [_version_json(v, info.active_version) for v in versions]
        return json_response(out, status)

    async def list(self, request: web.Request) -> web.Response:
        return json_response({"templates": [_info_json(t) for t in await self.store.list()]})

    async def create(self, request: web.Request) -> web.Response:
        body = await json_body(request)
        name = str_field(body, "name")
        assert name is not None
        info = await self.store.put(name, *_parts(body), only_new=True)
        return await self._detail(info.template_id, 201)

    async def show(self, request: web.Request) -> web.Response:
        return await self._detail(request.match_info["ref"])

    async def add_version(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        if await self.store.info(ref) is None:
            raise ApiError(404, f"no template {ref}")
        body = await json_body(request)
        info = await self.store.put(ref, *_parts(body), create=False)
        return await self._detail(info.template_id, 201)

    async def activate(self, request: web.Request) -> web.Response:
        ref, raw = request.match_info["ref"], request.match_info["version"]
        info = await self.store.info(ref)
        if info is None:
            raise ApiError(404, f"no template {ref}")
        if not raw.isdigit() or int(raw) not in info.versions:
            raise ApiError(404, f"template {info.name}: no version {raw}")
        await self.store.activate(info.template_id, int(raw))
        return await self._detail(info.template_id)

    async def delete(self, request: web.Request) -> web.Response:
        ref = request.match_info["ref"]
        if await self.store.info(ref) is None:
            raise ApiError(404, f"no template {ref}")
        info = await self.store.delete(ref)
        return json_response({"id": info.template_id, "name": info.name, "deleted": True})
