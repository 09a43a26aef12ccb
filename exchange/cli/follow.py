"""`exchange inbox --follow`: new bulletins as they arrive, one line each (or one JSON object per
line with --json), through the node's long poll (`GET /api/v1/follow`). Each answer names the cursor
to ask from next, so a dropped connection loses and repeats nothing: the loop waits and asks again
from the same cursor. Ctrl-C ends it."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any
from urllib.parse import urlencode

import click

from exchange.cli.client import Target, call
from exchange.cli.ids import short
from exchange.cli.output import plain
from exchange.errors import ApiError, PeerError

WAIT = 20  # seconds each long poll may wait at the node
BACKOFF = (1, 2, 5, 10, 30)  # seconds before asking again after a failed request


def line(item: dict[str, Any]) -> str:
    """One bulletin on one line, its fields shown literally (a title's newline or ESC too)."""
    fields = (item[k] for k in ("channel", "author", "kind", "tlp", "title", "created"))
    channel, author, kind, tlp, title, created = map(plain, fields)
    return f"{short(item['id'])}  {channel}  {author}  {kind}  TLP:{tlp}  {title}  {created}"


async def follow(target: Target, channel: str | None, after: int | None, as_json: bool) -> None:
    """Print every new bulletin once, for as long as it runs."""
    target = dataclasses.replace(target, timeout=max(target.timeout, WAIT + 15))
    cursor, failures = after, 0
    while True:
        query: dict[str, Any] = {"wait": WAIT}
        if channel is not None:
            query["channel"] = channel
        if cursor is not None:
            query["after"] = cursor
        try:
            page = await call(target, "GET", "/api/v1/follow?" + urlencode(query))
        except PeerError as exc:  # the node is down, stopping or busy: keep the cursor and try again
            if isinstance(exc, ApiError) and exc.status < 500 and exc.status != 429:
                raise  # refused for good (rights, input): say so and stop
            delay = BACKOFF[min(failures, len(BACKOFF) - 1)]
            failures += 1
            click.echo(f"warning: {plain(exc)}; asking again in {delay} s", err=True)
            await asyncio.sleep(delay)
            continue
        failures = 0
        for item in page["items"]:
            click.echo(json.dumps(item) if as_json else line(item))
        cursor = page["next"]
