"""A read that finds every pooled connection taken past the pool's timeout is Unavailable (503,
retryable) instead of an internal error: what a flood of witness or catch-up requests met before."""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from exchange.errors import Unavailable
from exchange.store import Store


async def test_a_read_past_a_full_pool_is_unavailable(
    database: Callable[[str], Awaitable[str]], tmp_path: Path
) -> None:
    url = await database("busy") or f"sqlite+aiosqlite:///{tmp_path / 'busy.db'}"
    store = await Store.open(url)
    pool = store.engine.pool
    pool._timeout = 0.2  # type: ignore[attr-defined]  # the default (30 s) is too long for a test
    try:
        async with contextlib.AsyncExitStack() as held:
            # Take every connection the pool will give (its size plus its overflow).
            limit = pool.size() + pool._max_overflow  # type: ignore[attr-defined]
            for _ in range(limit):
                await held.enter_async_context(store.read())
            with pytest.raises(Unavailable, match="busy"):
                async with store.read():
                    pass
        async with store.read() as conn:  # once released, reads work again
            assert await conn.scalar(sa.select(1)) == 1
    finally:
        await store.close()


async def test_a_postgresql_node_keeps_at_most_database_connections(
    database: Callable[[str], Awaitable[str]], tmp_path: Path
) -> None:
    """`database_connections` (node file, default 15) bounds each worker's PostgreSQL pool, so that
    an operator can budget workers under the server's max_connections (docs/operations.md); on
    SQLite the node has its own connections and the setting changes nothing."""
    url = await database("pool") or f"sqlite+aiosqlite:///{tmp_path / 'pool.db'}"
    for connections in (15, 3):
        store = await Store.open(url, connections=connections)
        try:
            async with store.read() as conn:
                assert await conn.scalar(sa.select(1)) == 1
            if store.engine.dialect.name == "postgresql":
                pool = store.engine.pool
                assert isinstance(pool, sa.pool.QueuePool)
                assert pool.size() == connections
                assert pool._max_overflow == 0
        finally:
            await store.close()
