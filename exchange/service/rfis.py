"""Requests for information and their answers: which of a channel's requests are open, answered or
overdue, and who answered. An answer is any bulletin that refers to the request (feedback, as the
console's reply does, or another kind) in a channel the user reads.

Flat in the store's size: the requests are looked for among the channel's newest `RFI_SCAN`
bulletins, and answers among the newest `ANSWER_SCAN` of the user's channels stored since the
oldest request shown (one index range per channel each, as every listing); `stopped` says a scan
stopped short of the channel's start.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa

from exchange.clock import utc_now
from exchange.service.access import Access
from exchange.service.summaries import SUMMARY, newest_start, summarised
from exchange.service.users import User
from exchange.service.views import View
from exchange.store import Store, bulletins

RFI = "request-for-information"
RFI_SCAN = 2000  # the channel's newest bulletins looked at for requests
RFI_SHOWN = 200  # requests on one board, newest first
ANSWER_SCAN = 5000  # the newest bulletins of the user's channels looked at for answers
RfiState = Literal["open", "answered", "overdue"]


@dataclass(frozen=True)
class Answer(View):
    id: str
    channel: str
    author: str
    kind: str
    created: str


@dataclass(frozen=True)
class RfiLine(View):
    """One request: `overdue` is open past its due date (UTC), `answered` has at least one answer."""

    id: str
    title: str
    author: str
    created: str
    due: str | None
    state: RfiState
    answers: list[Answer] = field(default_factory=list)


@dataclass(frozen=True)
class RfiBoard(View):
    channel: str
    today: str
    open: int
    overdue: int
    answered: int
    items: list[RfiLine]
    stopped: bool  # older bulletins exist that were not looked at


def state_of(due: str | None, answered: bool, today: str) -> RfiState:
    if answered:
        return "answered"
    return "overdue" if due is not None and due < today else "open"


class RequestsForInformation:
    """The requests-for-information board of a channel, within the user's rights."""

    def __init__(self, store: Store, access: Access) -> None:
        self.store = store
        self.access = access

    async def board(self, user: User, channel: str, today: str | None = None) -> RfiBoard:
        user.require("contact-point")
        self.access.require_readable(user, channel)
        today = today or utc_now().date().isoformat()
        text = sa.func.coalesce(bulletins.c.summary, bulletins.c.content)
        kind_member = f'"kind":{json.dumps(RFI)}'  # canonical JSON: the kind member, as search finds it
        async with self.store.read() as conn:
            oldest, stopped = await newest_start(conn, [channel], RFI_SCAN)
            query = sa.select(*SUMMARY).where(
                bulletins.c.channel == channel, bulletins.c.n >= oldest, text.contains(kind_member)
            )
            rows = (await conn.execute(query.order_by(bulletins.c.n.desc()).limit(RFI_SHOWN))).all()
            requests = [(r, c) for r, c in await summarised(conn, rows) if c.get("kind") == RFI]
            answers = await self._answers(conn, user, requests)
        items = []
        for row, content in requests:
            got = answers.get(row.id, [])
            due = content.get("due")
            items.append(
                RfiLine(row.id, content["title"], row.author, row.created, due, state_of(due, bool(got), today), got)
            )
        count = {s: sum(1 for i in items if i.state == s) for s in ("open", "overdue", "answered")}
        return RfiBoard(channel, today, count["open"], count["overdue"], count["answered"], items, stopped)

    async def _answers(
        self, conn: Any, user: User, requests: list[tuple[Any, dict[str, Any]]]
    ) -> dict[str, list[Answer]]:
        if not requests:
            return {}
        wanted = {r.id for r, _ in requests}
        readable = self.access.readable_channels(user)
        oldest, _ = await newest_start(conn, readable, ANSWER_SCAN)
        first = min(r.n for r, _ in requests)
        refers = sa.func.coalesce(bulletins.c.summary, bulletins.c.content).contains('"references":["')
        query = sa.select(*SUMMARY).where(
            bulletins.c.channel.in_(readable), bulletins.c.n >= max(oldest, first), refers
        )
        out: dict[str, list[Answer]] = {}
        for row, content in await summarised(conn, (await conn.execute(query.order_by(bulletins.c.n))).all()):
            for ref in set(content.get("references", [])) & wanted:
                out.setdefault(ref, []).append(Answer(row.id, row.channel, row.author, content["kind"], row.created))
        return out
