"""Two workers of one node over PostgreSQL racing on one row (from an operator's side): what
one worker's in-process lock cannot order is answered as the API promises, not with a 500.

- the same Idempotency-Key arriving at two workers at once (a client's retry on a new
  connection): one bulletin, and both answers are that post;
- two administrators changing one channel through two workers at once: both changes are made,
  one after the other.
Before, the loser of each race got SQLAlchemy's IntegrityError (500). Found by a read-only review."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import sqlalchemy as sa

from exchange.service.views import Posted
from exchange.store import bulletins
from tests.service.lone_node import NoPartners, bulletin
from tests.test_worker_leases import KE, NL, PG, close, provision, worker


@PG
async def test_one_idempotency_key_at_two_workers_at_once_posts_once(
    tmp_path: Path, database: Callable[[str], Awaitable[str]]
) -> None:
    await provision(tmp_path, database, {})
    a, b = await worker(tmp_path, NL, NoPartners(), "wa"), await worker(tmp_path, NL, NoPartners(), "wb")
    try:
        key = "retry-key-0123456789abcdef"
        got = await asyncio.gather(
            a.posting.post(await a.users.get("officer"), "c2c", bulletin("cash"), idempotency_key=key),
            b.posting.post(await b.users.get("officer"), "c2c", bulletin("cash"), idempotency_key=key),
            return_exceptions=True,
        )
        assert all(isinstance(g, Posted) for g in got), got
        assert isinstance(got[0], Posted) and isinstance(got[1], Posted) and got[0].id == got[1].id
        async with a.store.read() as conn:
            assert await conn.scalar(sa.select(sa.func.count()).select_from(bulletins)) == 1
    finally:
        await close(a, b)


@PG
async def test_two_workers_change_one_channel_at_once(
    tmp_path: Path, database: Callable[[str], Awaitable[str]]
) -> None:
    await provision(tmp_path, database, {})
    a, b = await worker(tmp_path, NL, NoPartners(), "wa"), await worker(tmp_path, NL, NoPartners(), "wb")
    try:
        before = a.channels.state("c2c").pos
        admin_a, admin_b = await a.users.get("admin"), await b.users.get("admin")
        got = await asyncio.gather(
            a.channels.change(admin_a, "c2c", {"type": "set-rights", "node": KE, "rights": ["read", "post"]}),
            b.channels.change(admin_b, "c2c", {"type": "set-rights", "node": KE, "rights": ["read"]}),
            return_exceptions=True,
        )
        assert not any(isinstance(g, BaseException) for g in got), got
        await a.channels.refresh("c2c")
        assert a.channels.state("c2c").pos == before + 2  # both changes, one after the other
    finally:
        await close(a, b)
