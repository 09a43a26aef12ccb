"""Routes for the node's own people (contact points, auditors, administrators), by bearer token."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

from exchange.crypto import strict_loads
from exchange.errors import InvalidInput
from exchange.model import Bulletin
from exchange.node.appkeys import SENDERS, SERVICE, USER
from exchange.node.openapi import openapi_document
from exchange.node.users import User, authenticate


async def current_user(request: web.Request) -> User:
    header = request.headers.get("Authorization", "")
    token = header[7:].strip() if header.lower().startswith("bearer ") else None
    user = await authenticate(request.app[SERVICE].store, token)
    request[USER] = user.name
    return user


def _int_param(request: web.Request, name: str, default: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    if not raw.isdigit():
        raise InvalidInput(f"query parameter {name} must be a non-negative integer")
    return int(raw)


async def whoami(request: web.Request) -> web.Response:
    user = await current_user(request)
    service = request.app[SERVICE]
    return web.json_response({"user": user.name, "role": user.role, "node": service.me})


async def list_channels(request: web.Request) -> web.Response:
    await current_user(request)
    service = request.app[SERVICE]
    return web.json_response(
        [
            {
                "id": s.channel,
                "title": s.title,
                "owner": s.owner,
                "pos": s.pos,
                "hash": s.hash,
                "agencies": list(s.policy.agencies),
                "default_handling": s.default_handling.model_dump(),
                "members": {n: sorted(r) for n, r in sorted(s.members.items())},
            }
            for s in service.channels()
            if service.me in s.members
        ]
    )


async def post_bulletin(request: web.Request) -> web.Response:
    user = await current_user(request)
    service = request.app[SERVICE]
    channel = request.match_info["channel"]
    raw: Any = strict_loads(await request.read())
    if isinstance(raw, dict) and "handling" not in raw:
        raw["handling"] = service.channel(channel).default_handling.model_dump()
    try:
        bulletin = Bulletin.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        raise InvalidInput(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}") from exc
    result = await service.post(user, channel, bulletin)
    return web.json_response(result, status=201)


async def list_bulletins(request: web.Request) -> web.Response:
    user = await current_user(request)
    items = await request.app[SERVICE].list_bulletins(
        user,
        channel=request.query.get("channel"),
        after=_int_param(request, "after", 0),
        limit=_int_param(request, "limit", 50),
    )
    return web.json_response({"items": items, "next": items[-1]["cursor"] if items else None})


async def read_bulletin(request: web.Request) -> web.Response:
    user = await current_user(request)
    return web.json_response(await request.app[SERVICE].read(user, request.match_info["id"]))


async def peers(request: web.Request) -> web.Response:
    await current_user(request)
    service = request.app[SERVICE]
    queued = await service.queued_counts()
    out = []
    for peer, sender in sorted(request.app[SENDERS].items()):
        sender.status.queued = queued.get(peer, 0)
        out.append(sender.status.as_dict())
    return web.json_response(out)


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document(request.app[SERVICE].config.endpoint))


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/openapi.json", openapi),
        web.get("/api/v1/whoami", whoami),
        web.get("/api/v1/channels", list_channels),
        web.post("/api/v1/channels/{channel}/bulletins", post_bulletin),
        web.get("/api/v1/bulletins", list_bulletins),
        web.get("/api/v1/bulletins/{id}", read_bulletin),
        web.get("/api/v1/peers", peers),
    ]
