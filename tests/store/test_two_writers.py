"""Two processes append to one SQLite audit log (an admin command such as `roster import` beside
a running node): each commit reads the log's end inside its write transaction, under SQLite's
write lock, so neither meets an index the other took (before: `UNIQUE constraint failed:
audit_log.idx`, retried, and CI once ran out of tries)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa

from exchange.store import Store
from exchange.store.tables import audit_log

EACH = 150


async def test_two_stores_on_one_sqlite_file_append_without_collision(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    node, admin = await Store.open(url), await Store.open(url)  # two engines: two processes' connections
    try:

        async def append(store: Store, who: str) -> None:
            for i in range(EACH):  # one commit each, interleaved with the other's
                await store.audit(cast(Any, {"event": "test.appended", "by": who, "n": i}))

        await asyncio.gather(append(node, "node"), append(admin, "admin"))
        async with node.read() as conn:
            rows = (await conn.execute(sa.select(audit_log.c.idx, audit_log.c.entry).order_by(audit_log.c.idx))).all()
    finally:
        await node.close()
        await admin.close()
    assert [int(idx) for idx, _ in rows] == list(range(2 * EACH))
    # each entry's own "idx" is its row's
    assert all(f'"idx":{idx},'.encode() in bytes(entry) for idx, entry in rows)
    assert max(node.audit_size, admin.audit_size) == 2 * EACH  # the one that committed last knows the end
