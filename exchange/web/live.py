"""The console's live inbox: server-sent events of new bulletins in the signed-in user's channels
(`Follow.stream`), which static/live.js adds to the open inbox with a notification. Pages work the
same without JavaScript; nothing is loaded from elsewhere.

A stream ends after `MAX_STREAM` seconds; the browser's EventSource reconnects by itself with the
last event's id (`Last-Event-ID`), so the session is checked again and nothing is missed or
repeated.

The stream is not use of the session: it opens and reconnects by itself and re-checks the session
every `RECHECK` seconds (exchange.service.follow), so none of that refreshes the idle time
(`signed_in(use=False)`). An open inbox nobody touches is signed out after the idle timeout like
any other page; the stream then sends a `signed-out` event and ends, and the page says so and
stops reconnecting."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiohttp import web

from exchange.errors import Unauthorized, Unavailable
from exchange.http import params
from exchange.http.appkeys import SERVICE
from exchange.service.users import User
from exchange.service.views import InboxLine
from exchange.web.i18n import DEFAULT, N_, language, say, when
from exchange.web.pages import KINDS, NEWS
from exchange.web.session import signed_in

MAX_STREAM = 300  # seconds one event stream lasts before the browser reconnects
SIGNED_OUT = b"event: signed-out\ndata: {}\n\n"  # the session ended: expired, signed out or removed


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
    session = await signed_in(request, use=False)
    service, lang = request.app[SERVICE], language(request)
    last = request.headers.get("Last-Event-ID")
    after = params.integer({"after": last}, "after", 0) if last else params.optional_integer(request.query, "after")
    ended = False  # the session ended while the stream was open

    async def current() -> User:  # the session and rights as they are now: signed out, it ends
        nonlocal ended
        try:
            return (await signed_in(request, use=False)).user
        except Unauthorized:
            ended = True
            raise

    stream = service.follow.stream(session.user, None, after, current)
    try:
        first = await anext(stream)  # rights and bounds are checked before anything is sent
    except StopAsyncIteration:
        raise (Unauthorized(N_("please sign in")) if ended else Unavailable("the node is stopping")) from None
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
            try:
                page = await anext(stream)
            except StopAsyncIteration:  # the node is stopping (the browser reconnects), or:
                if ended:  # the page says so and stops reconnecting
                    await response.write(SIGNED_OUT)
                break
    except (ConnectionResetError, asyncio.CancelledError):
        pass  # the browser left
    finally:
        await stream.aclose()
    return response


def _author_name(service: Any, node: str) -> str:
    return str(service.fed.name_of(node))  # a former member: its name, marked no longer active
