"""Routes for the node's own people (contact points, auditors, administrators), by bearer token."""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from pydantic import BaseModel, ValidationError

from exchange.errors import ExchangeError, Forbidden, InvalidInput
from exchange.http import params
from exchange.http.appkeys import SERVICE, USER
from exchange.http.problem import status_for
from exchange.model import (
    MAX_ATTACHMENT_BYTES,
    MAX_ATTACHMENTS,
    MAX_BODY,
    MAX_NAMED_INDICATORS,
    MAX_PURPOSE,
    MAX_SHORT,
    Bulletin,
)
from exchange.node.bodies import AUDIT_PAGE_LIMIT, MEMBERSHIP, PAGE_LIMIT, Assignment, Forward, NewChannel, NewWebhook
from exchange.node.openapi import openapi_json
from exchange.service.batch import MAX_ITEMS as MAX_BATCH_ITEMS
from exchange.service.follow import MAX_WAIT
from exchange.service.listing import Filters
from exchange.service.posting import Replayed
from exchange.service.users import User
from exchange.service.views import channel_view

# Request bodies, per route (exchange.http.params.body_bytes answers 413 past them). A bulletin
# at its largest: its attachments in base64url, and every code point of its text, title, names
# and named indicators written as JSON may write an astral character (two \u escapes, 12 bytes),
# with a margin for the rest (the patterned indicators and references are ASCII, 50 KB at most).
ESCAPED = 12
BULLETIN_BODY = (
    (MAX_ATTACHMENT_BYTES * 4) // 3
    + ESCAPED * (MAX_BODY + (2 * MAX_NAMED_INDICATORS + MAX_ATTACHMENTS + 1) * MAX_SHORT)
    + 256 * 1024
)
BATCH_BODY = 32 * 1024 * 1024  # a batch of bulletins, together (each item keeps its own limits)
BATCH_VALUES = 100 * MAX_BATCH_ITEMS  # JSON values a batch of small bulletins may hold (an alert: about 15)
CHANNEL_BODY = ESCAPED * (MAX_PURPOSE + MAX_SHORT) + 4096  # a purpose and a title, escaped

Handler = Callable[[web.Request], Awaitable[web.Response]]


async def current_user(request: web.Request, *, feed: bool = False) -> User:
    """The local user the bearer token belongs to, or Unauthorized (401). A `feed` user (an analysts'
    platform) is Forbidden (403) but where `feed` says its route serves what may leave the node."""
    user = await request.app[SERVICE].users.authenticate(params.bearer_token(request.headers))
    request[USER] = user.name
    if user.role == "feed" and not feed:
        raise Forbidden(f"user {user.name!r} is a feed: it takes TAXII collections and STIX exports only")
    return user


async def _body(request: web.Request, limit: int = params.SMALL_BODY) -> Any:
    return await params.json_body(request, limit)


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
    else:
        user.require("admin", "auditor")  # every channel: never a role added later by default
    return web.json_response([channel_view(s) for s in states])


async def show_channel(request: web.Request) -> web.Response:
    user = await current_user(request)
    channel = params.channel_id(request.match_info["channel"])
    if user.role == "contact-point":
        user.require_channel(channel)
    else:
        user.require("admin", "auditor")
    return web.json_response(channel_view(request.app[SERVICE].channels.state(channel)))


async def create_channel(request: web.Request) -> web.Response:
    user = await current_user(request)
    user.require("admin")
    raw = await _body(request, CHANNEL_BODY)
    if isinstance(raw, dict):
        raw.setdefault("type", "create")
    spec: NewChannel = _validate(NewChannel, raw)
    state = await request.app[SERVICE].channels.create(
        user, spec.id, spec.model_dump(mode="json", exclude={"id", "type"})
    )
    return web.json_response(channel_view(state), status=201)


def change_membership(action: str) -> Handler:
    """The route of one membership change, ordered and signed by this (owner) node."""
    kind, model = MEMBERSHIP[action]

    async def handler(request: web.Request) -> web.Response:
        user = await current_user(request)
        user.require("admin")
        channel = params.channel_id(request.match_info["channel"])
        change: dict[str, Any] = {"type": kind}
        if model is not None:
            change |= _validate(model, await _body(request)).model_dump(mode="json")
        return web.json_response(channel_view(await request.app[SERVICE].channels.change(user, channel, change)))

    return handler


async def accept_invitation(request: web.Request) -> web.Response:
    """This node accepts an invitation to a channel; the owner orders the acceptance into its log."""
    user = await current_user(request)
    user.require("admin")
    channel = params.channel_id(request.match_info["channel"])
    return web.json_response(channel_view(await request.app[SERVICE].channels.accept(user, channel)))


async def assign_user(request: web.Request) -> web.Response:
    """An administrator gives a local contact point a channel to work in, or takes it away."""
    user = await current_user(request)
    user.require("admin")
    channel = params.channel_id(request.match_info["channel"])
    request.app[SERVICE].channels.state(channel)
    body: Assignment = _validate(Assignment, await _body(request))
    await request.app[SERVICE].users.assign(body.user, channel, assigned=body.assigned, actor=user.name)
    return web.json_response({"user": body.user, "channel": channel, "assigned": body.assigned})


async def post_bulletin(request: web.Request) -> web.Response:
    user = await current_user(request)
    service = request.app[SERVICE]
    channel = params.channel_id(request.match_info["channel"])
    user.require_channel(channel)
    raw: Any = await _body(request, BULLETIN_BODY)
    if isinstance(raw, dict) and "handling" not in raw:
        raw["handling"] = service.channels.state(channel).default_handling.model_dump()
    bulletin: Bulletin = _validate(Bulletin, raw)
    # Idempotency-Key: a retry with the same key gets the first answer (exchange.service.posting).
    key = ", ".join(request.headers.getall("Idempotency-Key")) if "Idempotency-Key" in request.headers else None
    posted = await service.post(user, channel, bulletin, idempotency_key=key)
    replayed = {"Idempotent-Replayed": "true"} if isinstance(posted, Replayed) else None
    return web.json_response(posted.as_json(), status=201, headers=replayed)


async def post_batch(request: web.Request) -> web.Response:
    """Up to 1,000 bulletins to one channel: each item posted or refused on its own, answered in
    order with its status, and idempotent per item under the request's Idempotency-Key."""
    user = await current_user(request)
    service = request.app[SERVICE]
    channel = params.channel_id(request.match_info["channel"])
    user.require_channel(channel)
    raw = params.json_object(await params.json_body(request, BATCH_BODY, min_values=BATCH_VALUES))
    listed = raw.get("bulletins")
    if set(raw) != {"bulletins"} or not isinstance(listed, list) or not 1 <= len(listed) <= MAX_BATCH_ITEMS:
        raise InvalidInput(f'the body must be {{"bulletins": [...]}} with 1 to {MAX_BATCH_ITEMS} bulletins')
    default = service.channels.state(channel).default_handling.model_dump()
    items: list[Bulletin | ExchangeError] = []
    for i, entry in enumerate(listed):
        if isinstance(entry, dict) and "handling" not in entry:
            entry["handling"] = default
        try:
            items.append(Bulletin.model_validate(entry))
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"])
            if any(e["type"] != "value_error" for e in exc.errors()):
                # Not the shape the API describes: the request is malformed, and refused whole.
                raise InvalidInput(f"bulletins.{i}.{where}: {err['msg']}") from exc
            items.append(InvalidInput(f"{where}: {err['msg']}"))  # a rule of the model: this item alone
    key = ", ".join(request.headers.getall("Idempotency-Key")) if "Idempotency-Key" in request.headers else None
    results = await service.post_many(user, channel, items, idempotency_key=key)
    answers = []
    for i, result in enumerate(results):
        if isinstance(result, ExchangeError):
            answers.append(
                {"index": i, "status": status_for(result), "error": type(result).__name__, "detail": result.detail}
            )
        else:
            answers.append({"index": i, "status": 201, "posted": result.as_json()})
    posted = sum(1 for a in answers if a["status"] == 201)
    refused = Counter((status_for(r), type(r).__name__) for r in results if isinstance(r, ExchangeError))
    if refused:  # audited as a refused request is, one entry for the batch: its refusals counted
        (status, _), _ = refused.most_common(1)[0]
        counts = ", ".join(f"{n} {error} ({code})" for (code, error), n in refused.most_common())
        await service.audit_rejection(
            method=request.method,
            path=request.path,
            status=status,
            reason=f"{sum(refused.values())} of {len(answers)} items refused: {counts}",
            peer=None,
            user=user.name,
            address=request.remote,
        )
    return web.json_response({"posted": posted, "refused": len(answers) - posted, "items": answers})


async def forward_bulletin(request: web.Request) -> web.Response:
    user = await current_user(request)
    bid = params.bulletin_id(request.match_info["id"])
    body: Forward = _validate(Forward, await _body(request))
    key = ", ".join(request.headers.getall("Idempotency-Key")) if "Idempotency-Key" in request.headers else None
    result = await request.app[SERVICE].forward(user, bid, body.channel, idempotency_key=key)
    replayed = {"Idempotent-Replayed": "true"} if isinstance(result, Replayed) else None
    return web.json_response(result.as_json(), status=201, headers=replayed)


async def list_bulletins(request: web.Request) -> web.Response:
    user = await current_user(request)
    q = request.query
    if any(name in q for name in LINE_FILTERS):
        return web.json_response((await request.app[SERVICE].listing.lines(user, _filters(q))).as_json())
    items = await request.app[SERVICE].list_bulletins(
        user,
        channel=params.optional_text(q, "channel", params.channel_id),
        after=params.integer(q, "after", 0),
        limit=params.integer(q, "limit", 50, minimum=1, maximum=PAGE_LIMIT),
    )
    return web.json_response({"items": [i.as_json() for i in items], "next": items[-1].cursor if items else None})


async def follow(request: web.Request) -> web.Response:
    """Long poll: the user's new bulletins after `after` (absent: from now), waiting up to `wait`
    seconds for the first; `next` is where to ask from again (exchange.service.follow)."""
    user = await current_user(request)
    q = request.query
    page = await request.app[SERVICE].follow.wait(
        user,
        params.optional_text(q, "channel", params.channel_id),
        params.optional_integer(q, "after"),
        params.integer(q, "wait", 0, maximum=MAX_WAIT),
        lambda: current_user(request),  # its token and rights as they are when bulletins come
    )
    return web.json_response(page.as_json())


LINE_FILTERS = ("order", "before", "unread", "since")  # any of them: inbox lines (exchange.service.listing)


def _filters(q: Any) -> Filters:
    order = q.get("order", "oldest")
    if order not in ("oldest", "newest"):
        raise InvalidInput("query parameter order must be oldest or newest")
    return Filters(
        channel=params.optional_text(q, "channel", params.channel_id),
        newest=order == "newest",
        after=params.integer(q, "after", 0),
        before=params.optional_integer(q, "before", minimum=1),
        unread=params.boolean(q, "unread", False),
        since=params.optional_text(q, "since", params.time_or_date),
        limit=params.integer(q, "limit", 50, minimum=1, maximum=PAGE_LIMIT),
    )


async def bulletin_ids(request: web.Request) -> web.Response:
    """The bulletins whose id begins with `prefix` (8 to 64 hex characters) that the user may see."""
    user = await current_user(request)
    prefix = request.query.get("prefix")
    if prefix is None:
        raise InvalidInput("query parameter prefix is required: 8 to 64 hex characters of a bulletin id")
    return web.json_response((await request.app[SERVICE].ids.matching(user, prefix)).as_json())


async def read_bulletin(request: web.Request) -> web.Response:
    user = await current_user(request)
    bid = params.bulletin_id(request.match_info["id"])
    return web.json_response((await request.app[SERVICE].read(user, bid)).as_json())


async def audit_entries(request: web.Request) -> web.Response:
    user = await current_user(request)
    user.require("auditor")
    q = request.query
    entries = await request.app[SERVICE].audit.entries(
        after=params.integer(q, "after", -1, minimum=-1),
        limit=params.integer(q, "limit", 100, minimum=1, maximum=AUDIT_PAGE_LIMIT),
    )
    return web.json_response({"entries": entries})


async def peers(request: web.Request) -> web.Response:
    user = await current_user(request)
    user.require("admin", "auditor", "contact-point")
    return web.json_response([s.as_dict() for s in await request.app[SERVICE].peer_statuses()])


async def export_stix(request: web.Request) -> web.Response:
    """A STIX 2.1 bundle of the channel (or of `bulletin=<id>` in it), under the TAXII policy, audited."""
    user = await current_user(request, feed=True)
    channel = params.channel_id(request.match_info["channel"])
    raw = request.query.get("bulletin")
    bid = None if raw is None else params.bulletin_id(raw)
    result = await request.app[SERVICE].taxii.export(user, channel, bid)
    return web.json_response(result)


async def rfi_board(request: web.Request) -> web.Response:
    """The channel's requests for information: open, answered (by whom) and overdue."""
    user = await current_user(request)
    channel = params.channel_id(request.match_info["channel"])
    return web.json_response((await request.app[SERVICE].rfis.board(user, channel)).as_json())


async def register_webhook(request: web.Request) -> web.Response:
    """An administrator registers a URL that each new bulletin's metadata of the channel is POSTed to;
    the answer holds the signing secret, shown this once."""
    user = await current_user(request)
    channel = params.channel_id(request.match_info["channel"])
    body: NewWebhook = _validate(NewWebhook, await _body(request))
    registered = await request.app[SERVICE].webhooks.register(user, channel, body.url)
    return web.json_response(registered.as_json(), status=201)


async def list_webhooks(request: web.Request) -> web.Response:
    user = await current_user(request)
    return web.json_response([w.as_json() for w in await request.app[SERVICE].webhooks.list(user)])


async def remove_webhook(request: web.Request) -> web.Response:
    user = await current_user(request)
    webhook_id = params.integer({"id": request.match_info["id"]}, "id", 0, minimum=1)
    await request.app[SERVICE].webhooks.remove(user, webhook_id)
    return web.json_response({"removed": webhook_id})


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document of every client, audit and federation route."""
    return web.Response(body=openapi_json(request.app[SERVICE].config.endpoint), content_type="application/json")


def routes() -> list[web.RouteDef]:
    return [
        web.get("/api/v1/openapi.json", openapi),
        web.get("/api/v1/whoami", whoami),
        web.get("/api/v1/channels", list_channels),
        web.post("/api/v1/channels", create_channel),
        web.get("/api/v1/channels/{channel}", show_channel),
        web.post("/api/v1/channels/{channel}/users", assign_user),
        web.post("/api/v1/channels/{channel}/bulletins", post_bulletin),
        web.post("/api/v1/channels/{channel}/bulletins/batch", post_batch),
        web.post("/api/v1/channels/{channel}/accept", accept_invitation),
        web.get("/api/v1/channels/{channel}/stix", export_stix),
        web.get("/api/v1/channels/{channel}/rfis", rfi_board),
        web.post("/api/v1/channels/{channel}/webhooks", register_webhook),
        web.get("/api/v1/webhooks", list_webhooks),
        web.delete("/api/v1/webhooks/{id}", remove_webhook),
        *(web.post(f"/api/v1/channels/{{channel}}/{action}", change_membership(action)) for action in MEMBERSHIP),
        web.get("/api/v1/bulletins", list_bulletins),
        web.get("/api/v1/bulletin-ids", bulletin_ids),
        web.get("/api/v1/follow", follow),
        web.get("/api/v1/bulletins/{id}", read_bulletin),
        web.post("/api/v1/bulletins/{id}/forward", forward_bulletin),
        web.get("/api/v1/audit/entries", audit_entries),
        web.get("/api/v1/peers", peers),
    ]
