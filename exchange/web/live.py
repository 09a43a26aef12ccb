"""The console's live inbox: server-sent events of new bulletins in the signed-in user's channels
(`Follow.stream`), which static/live.js adds to the open inbox with a notification. Pages work the
same without JavaScript; nothing is loaded from elsewhere.

A stream ends after `MAX_STREAM` seconds; the browser's EventSource reconnects by itself with the
last event's id (`Last-Event-ID`), so the session is checked again and nothing is missed or
repeated."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from exchange.errors import Unavailable
from exchange.http import params
from exchange.http.appkeys import SERVICE
from exchange.service.users import User
from exchange.service.views import InboxLine
from exchange.web.i18n import DEFAULT, language, say, when
from exchange.web.pages import KINDS, NEWS
from exchange.web.session import signed_in

MAX_STREAM = 300  # seconds one event stream lasts before the browser reconnects


def event(item: InboxLine, author_name: str, lang: str = DEFAULT) -> bytes:
    """One server-sent event; its labels and time are in the reader's language (`lang`)."""
    data = {
        **item.as_json(),
        "kind_label": say(lang, KINDS.get(item.kind, item.kind)),
        "news": say(lang, NEWS.get(item.kind, item.kind)),
        "created_label": when(item.created, lang),
        "author_name": author_name,
    }
    return f"id: {item.cursor}\nevent: bulletin\ndata: {json.dumps(data)}\n\n".encode()


async def events(request: web.Request) -> web.StreamResponse:
    """`GET /console/events?after=<cursor>`: new bulletins of the user's channels, as they are stored."""
    session = await signed_in(request)
    service, lang = request.app[SERVICE], language(request)
    last = request.headers.get("Last-Event-ID")
    after = params.integer({"after": last}, "after", 0) if last else params.optional_integer(request.query, "after")

    async def current() -> User:  # the session and rights as they are now: signed out, it ends
        return (await signed_in(request)).user

    stream = service.follow.stream(session.user, None, after, current)
    try:
        first = await anext(stream)  # rights and bounds are checked before anything is sent
    except StopAsyncIteration:
        raise Unavailable("the node is stopping") from None
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
    loop = asyncio.get_running_loop()
    until = loop.time() + MAX_STREAM
    try:
        # Inside the try: a browser that has already left (the officer opened a bulletin) makes
        # prepare fail, and the started stream must still be closed, or it holds its connection.
        await response.prepare(request)
        page: Any = first
        while True:
            for item in page.items:
                await response.write(event(item, _author_name(service, item.author), lang))
            if not page.items:
                await response.write(b": keep-alive\n\n")
            if loop.time() >= until:
                break
            page = await anext(stream)
    except (ConnectionResetError, asyncio.CancelledError, StopAsyncIteration):
        pass  # the browser left, or the node is stopping (the stream ended): the browser reconnects
    finally:
        await stream.aclose()
    return response


def _author_name(service: Any, node: str) -> str:
    return str(service.fed.name_of(node))  # a former member: its name, marked no longer active
