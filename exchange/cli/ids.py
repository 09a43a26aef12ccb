"""Bulletin ids on the command line, as git takes object names: a whole id, or any prefix of at
least 8 hex characters that names one bulletin the user may see (the node looks it up:
`GET /api/v1/bulletin-ids`). An ambiguous prefix lists the candidates and exits 1."""

from __future__ import annotations

import re
import sys
from typing import Any, NoReturn
from urllib.parse import quote

from exchange.cli.client import Target, call
from exchange.cli.output import err_console, literal
from exchange.errors import NotFound

WHOLE = re.compile(r"[0-9a-f]{64}")
SHOWN = 12  # hex characters of an id in tables and candidate lists


def short(bid: str) -> str:
    return bid[:SHOWN]


async def resolve_id(target: Target, given: str) -> str:
    """The whole id that `given` names: itself if whole, else the one bulletin its prefix names.

    NotFound if none does; an ambiguous prefix prints its candidates on stderr and exits 1. A prefix
    that is too short or not hex is refused by the node, whose message the CLI prints.
    """
    if WHOLE.fullmatch(given):
        return given
    found = await call(target, "GET", f"/api/v1/bulletin-ids?prefix={quote(given, safe='')}")
    matches = found["matches"]
    if not matches:
        raise NotFound(f"no bulletin id begins with {found['prefix']} in the bulletins you may see")
    if len(matches) > 1:
        ambiguous(found["prefix"], matches, found["more"])
    return str(matches[0]["id"])


def ambiguous(prefix: str, matches: list[dict[str, Any]], more: bool) -> NoReturn:
    """Say the prefix is ambiguous and list its candidates, like git: on stderr, then exit 1."""
    err_console.print(f"[red]error:[/red] bulletin id {literal(prefix)} is ambiguous", highlight=False)
    err_console.print("hint: the candidates are:", highlight=False)
    for m in matches:
        title = f"  {m['kind']}  {m['title']}" if m.get("title") is not None else ""
        line = f"hint:   {m['id'][: max(SHOWN, len(prefix) + 4)]}  {m['channel']}  {m['author']}  {m['created']}{title}"
        err_console.print(literal(line), highlight=False, soft_wrap=True)
    if more:
        err_console.print("hint:   ... and more: give more characters", highlight=False)
    sys.exit(1)
