"""Posts refused inside a batch are audited, one entry for the batch (docs/operations.md: every
refused request is audited, within bounds): a member without `post` that sends 50 posts in one
batch leaves a `request.rejected` entry naming its user, the route and the refusals counted, as
one refused post does. Before, the batch answered 200 and left no trace. Found by a read-only
review; SQLite and PostgreSQL."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from exchange.store import audit_log
from tests.conftest import MakeFederation, Member

ITEM = {"kind": "alert", "title": "t", "body": "b"}
CHANNEL = {
    "id": "c2c",
    "owner": "nl-customs",
    "agencies": ["customs"],
    "members": {"nl-customs": ["read", "post", "admin"], "ke-customs": ["read"]},
}


async def rejected(member: Member, since: int) -> list[dict[str, Any]]:
    async with member.service.store.read() as conn:
        rows = (await conn.execute(sa.select(audit_log.c.entry).where(audit_log.c.idx >= since))).scalars().all()
    return [e for e in map(json.loads, rows) if e["event"] == "request.rejected"]


async def size(member: Member) -> int:
    async with member.service.store.read() as conn:
        return int(await conn.scalar(sa.select(sa.func.count()).select_from(audit_log)) or 0)


async def test_posts_refused_in_a_batch_are_audited_once_for_the_batch(make_federation: MakeFederation) -> None:
    fed = await make_federation(channels=[CHANNEL])
    ke = fed["ke-customs"]
    before = await size(ke)
    status, answer, _ = await ke.api("POST", "/api/v1/channels/c2c/bulletins/batch", body={"bulletins": [ITEM] * 50})
    assert status == 200 and answer["refused"] == 50 and answer["posted"] == 0, answer
    (entry,) = await rejected(ke, before)
    assert entry["status"] == 403 and entry["user"] == "officer", entry
    assert entry["path"] == "/api/v1/channels/c2c/bulletins/batch", entry
    assert entry["reason"].startswith("50 of 50 items refused: 50 NotAMember (403)"), entry

    before = await size(ke)  # a batch with nothing refused adds no such entry
    status, answer, _ = await fed["nl-customs"].api(
        "POST", "/api/v1/channels/c2c/bulletins/batch", body={"bulletins": [ITEM] * 2}
    )
    assert status == 200 and answer["posted"] == 2, answer
    assert await rejected(fed["nl-customs"], 0) == []
