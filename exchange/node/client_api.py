"""Routes for the node's own people (contact points, auditors, administrators), by bearer token."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from exchange.crypto import strict_loads
from exchange.errors import InvalidInput
from exchange.http.appkeys import SERVICE, USER
from exchange.model import Bulletin, ChannelIdStr, Create
from exchange.node.openapi import openapi_document
from exchange.service.users import User
from exchange.service.views import MemberChange, channel_view


async def current_user(request: web.Request) -> User:
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    user = await request.app[SERVICE].users.authenticate(token)
    request[USER] = user.name
    return user


def _int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.lstrip("-").isdigit():
        raise InvalidInput(f"query parameter {name} must be an integer")
    return int(raw)


async def _body(request: web.Request) -> Any:
    return strict_loads(await request.read())


def _validate(model: type[BaseModel], raw: Any) -> Any:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InvalidInput(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from exc


async def whoami(request: web.Request) -> web.Response:
    user = await current_user(request)
    return web.json_response(
        {"user": user.name, "role": user.role, "channels": sorted(user.channels), "node": request.app[SERVICE].me}
    )


async def list_channels(request: web.Request) -> web.Response:
    """Contact points see their channels; administrators and auditors see all this node takes part in."""
    user = await current_user(request)
    book = request.app[SERVICE].channels
    states = book.all()
    if user.role == "contact-point":
        states = [s for s in states if s.channel in user.channels]
    return web.json_response([channel_view(s) for s in states])


async def show_channel(request: web.Request) -> web.Response:
    user = await current_user(request)
    channel = request.match_info["channel"]
    if user.role == "contact-point":
        user.require_channel(channel)
    return web.json_response(channel_view(request.app[SERVICE].channels.state(channel)))


class NewChannel(Create):
    id: ChannelIdStr


async def create_channel(request: web.Request) -> web.Response:
    user = await current_user(request)
    user.require("admin")
    raw = await _body(request)
    if isinstance(raw, dict):
        raw.setdefault("type", "create")
    spec: NewChannel = _validate(NewChannel, raw)
    state = await request.app[SERVICE].channels.create(
        user, spec.id, spec.model_dump(mode="json", exclude={"id", "type"})
    )
    return web.json_response(channel_view(state), status=201)


async def change_membership(request: web.Request) -> web.Response:
    """invite, rights, remove, grant-history, close: ordered and signed by this (owner) node."""
    user = await current_user(request)
    user.require("admin")
    action = request.match_info["action"]
    channel = request.match_info["channel"]
    book = request.app[SERVICE].channels
    if action == "accept":
        return web.json_response(channel_view(await book.accept(user, channel)))
    if action == "close":
        change: dict[str, Any] = {"type": "close"}
    else:
        body: MemberChange = _validate(MemberChange, await _body(request))
        kinds = {"invite": "invite", "rights": "set-rights", "remove": "remove", "grant-history": "grant-history"}
        if action not in kinds:
            raise web.HTTPNotFound()
        change = {"type": kinds[action], "node": body.node}
        if action in ("invite", "rights"):
            if body.rights is None:
                raise InvalidInput("rights are required")
            change["rights"] = body.rights
    return web.json_response(channel_view(await book.change(user, channel, change)))


class Assignment(BaseModel):
    user: str
    assigned: bool = True


async def assign_user(request: web.Request) -> web.Response:
    """An administrator gives a local contact point a channel to work in, or takes it away."""
    user = await current_user(request)
    user.require("admin")
    channel = request.match_info["channel"]
    request.app[SERVICE].channels.state(channel)
    body: Assignment = _validate(Assignment, await _body(request))
    await request.app[SERVICE].users.assign(body.user, channel, assigned=body.assigned, actor=user.name)
    return web.json_response({"user": body.user, "channel": channel, "assigned": body.assigned})


async def post_bulletin(request: web.Request) -> web.Response:
    user = await current_user(request)
    service = request.app[SERVICE]
    channel = request.match_info["channel"]
    user.require_channel(channel)
    raw: Any = await _body(request)
    if isinstance(raw, dict) and "handling" not in raw:
        raw["handling"] = service.channels.state(channel).default_handling.model_dump()
    bulletin: Bulletin = _validate(Bulletin, raw)
    return web.json_response((await service.post(user, channel, bulletin)).as_json(), status=201)


class Forward(BaseModel):
    channel: ChannelIdStr


async def forward_bulletin(request: web.Request) -> web.Response:
    user = await current_user(request)
    body: Forward = _validate(Forward, await _body(request))
    result = await request.app[SERVICE].forward(user, request.match_info["id"], body.channel)
    return web.json_response(result.as_json(), status=201)


async def list_bulletins(request: web.Request) -> web.Response:
    user = await current_user(request)
    items = await request.app[SERVICE].list_bulletins(
        user,
        channel=request.query.get("channel"),
        after=_int_param(request, "after", 0),
        limit=_int_param(request, "limit", 50),
    )
    return web.json_response({"items": [i.as_json() for i in items], "next": items[-1].cursor if items else None})


async def read_bulletin(request: web.Request) -> web.Response:
    user = await current_user(request)
    return web.json_response((await request.app[SERVICE].read(user, request.match_info["id"])).as_json())


async def audit_entries(request: web.Request) -> web.Response:
    user = await current_user(request)
    user.require("auditor")
    entries = await request.app[SERVICE].audit.entries(
        after=_int_param(request, "after", -1), limit=min(_int_param(request, "limit", 100), 1000)
    )
    return web.json_response({"entries": entries})


async def peers(request: web.Request) -> web.Response:
    user = await current_user(request)
    user.require("admin", "auditor", "contact-point")
    return web.json_response([s.as_dict() for s in await request.app[SERVICE].peer_statuses()])


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app[SERVICE].config.endpoint))


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/openapi.json", openapi),
        web.get("/api/v1/whoami", whoami),
        web.get("/api/v1/channels", list_channels),
        web.post("/api/v1/channels", create_channel),
        web.get("/api/v1/channels/{channel}", show_channel),
        web.post("/api/v1/channels/{channel}/users", assign_user),
        web.post("/api/v1/channels/{channel}/bulletins", post_bulletin),
        web.post("/api/v1/channels/{channel}/{action}", change_membership),
        web.get("/api/v1/bulletins", list_bulletins),
        web.get("/api/v1/bulletins/{id}", read_bulletin),
        web.post("/api/v1/bulletins/{id}/forward", forward_bulletin),
        web.get("/api/v1/audit/entries", audit_entries),
        web.get("/api/v1/peers", peers),
    ]
