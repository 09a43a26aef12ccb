"""Bulletin ids as people type them: like git, any prefix of at least 8 hex characters names the one
bulletin whose id begins with it, among those the user may see.

One indexed range scan on the unique id (`id >= prefix AND id < prefix + "g"`: every id is lower-
case hex, and "g" sorts after "f"), at most CANDIDATES + 1 rows, whatever the store holds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import sqlalchemy as sa

from exchange.errors import InvalidInput
from exchange.model import BulletinId, ChannelId, NodeId
from exchange.service.access import Access
from exchange.service.summaries import read_summary
from exchange.service.users import User
from exchange.service.views import View
from exchange.store import Store, bulletins

MIN_PREFIX = 8  # hex characters: 32 bits, as git's default abbreviation is 7 and ids here are 256 bits
CANDIDATES = 10  # listed for an ambiguous prefix; one more is looked up, to say there are more
PREFIX = re.compile(r"[0-9a-f]{8,64}")


def id_prefix(raw: str) -> str:
    """A bulletin id or a prefix of one: 8 to 64 lower-case hexadecimal characters, or InvalidInput."""
    text = raw
    if not PREFIX.fullmatch(text):
        if re.fullmatch(r"[0-9a-f]{1,7}", text):
            raise InvalidInput(f"{raw!r} is too short: give at least {MIN_PREFIX} hex characters of a bulletin id")
        raise InvalidInput(f"{raw!r} is not a bulletin id: 8 to 64 lower-case hexadecimal characters")
    return text


@dataclass(frozen=True)
class IdMatch(View):
    """A bulletin whose id begins with a prefix: enough to tell it apart. Kind and title are content,
    shown to its readers only (an auditor sees the header's metadata)."""

    id: BulletinId
    channel: ChannelId
    author: NodeId
    created: str
    kind: str | None
    title: str | None


@dataclass(frozen=True)
class Matches(View):
    """The bulletins a prefix names: one if it is unique; `more` when there are over CANDIDATES."""

    prefix: str
    matches: list[IdMatch]
    more: bool


class BulletinIds:
    """Which bulletins an id prefix names, among those a user may see."""

    def __init__(self, store: Store, access: Access) -> None:
        self.store = store
        self.access = access

    async def matching(self, user: User, raw: str) -> Matches:
        """The bulletins whose id begins with `raw`: a contact point's among the channels it reads now;
        an auditor's among every bulletin this node holds (ids it reads in the audit log anyway)."""
        user.require("contact-point", "auditor")
        prefix = id_prefix(raw)
        query = (
            sa.select(bulletins.c.id, bulletins.c.channel, bulletins.c.author, bulletins.c.created, bulletins.c.summary)
            .where(bulletins.c.id >= prefix, bulletins.c.id < prefix + "g")
            .order_by(bulletins.c.id)
            .limit(CANDIDATES + 1)
        )
        readable: list[str] | None = None
        if user.role == "contact-point":
            readable = self.access.readable_channels(user)
            # `channel || ''` keeps the planner on the id range: the channel index would scan whole channels.
            query = query.where((bulletins.c.channel + sa.literal("")).in_(readable))
        async with self.store.read() as conn:
            rows = (await conn.execute(query)).all()
        found = []
        for r in rows[:CANDIDATES]:
            # What a contact point may see of it; the stand-in where its summary cannot be read.
            summary = read_summary(r, r.summary) if readable is not None and r.summary is not None else {}
            found.append(
                IdMatch(
                    id=BulletinId(r.id),
                    channel=ChannelId(r.channel),
                    author=NodeId(r.author),
                    created=r.created,
                    kind=summary.get("kind"),
                    title=summary.get("title"),
                )
            )
        return Matches(prefix=prefix, matches=found, more=len(rows) > CANDIDATES)
