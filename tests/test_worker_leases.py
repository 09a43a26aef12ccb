"""Several workers of one node over PostgreSQL keep a partner's outbox lease while they wait on it
(exchange.service.leases, `kept`), from an operator's side:

- a partner that answers later than the lease lasts is recorded delivered: before, another worker
  took the lease meanwhile and sent the same batch again, and each answer's receipts were refused
  (LeaseLost), for ever;
- a partner that is down is retried by one worker on one back-off schedule, not by each worker
  on its own: before, two workers retried it about twice as often.

Workers are NodeService instances in this process over one PostgreSQL database, with the lease
scaled down (1 s for 5 s). Found by a read-only review."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import exchange.service.leases as leases_mod
from exchange.errors import PeerError
from exchange.model import NodeId
from exchange.provision import init_federation
from exchange.service.leases import Leases
from exchange.service.node import NodeService
from exchange.store import outbox
from tests.conftest import eventually, write_federation
from tests.service.lone_node import NoPartners, bulletin, node_service
from tests.service.test_outbox import MemoryTransport

NL, KE = "nl-customs", "ke-customs"
NODES = {NL: ("NL", "customs"), KE: ("KE", "customs")}
CHANNEL = {"id": "c2c", "owner": NL, "agencies": ["customs"], "members": {NL: ["read", "post", "admin"], KE: ["read"]}}
LEASE = 1.0  # stands for LEASE_SECONDS (5 s)
PG = pytest.mark.parametrize("database", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)


async def provision(folder: Path, database: Callable[[str], Awaitable[str]], options: dict[str, Any]) -> None:
    write_federation(folder, NODES, [CHANNEL], {n: await database(n) for n in NODES}, options)
    await init_federation(folder)


async def worker(folder: Path, node: str, transport: Any, holder: str) -> NodeService:
    svc = await node_service(folder / f"{node}.toml", transport)
    svc.outbox.leases = Leases(svc.store, holder=holder, seconds=LEASE)
    return svc


async def close(*svcs: NodeService) -> None:
    for svc in svcs:
        for task in svc.sending.stop():
            task.cancel()
    await asyncio.sleep(0.1)
    for svc in svcs:
        with contextlib.suppress(Exception):
            await svc.stop()
        with contextlib.suppress(Exception):
            await svc.store.close()


class Slow(MemoryTransport):
    """Delivers at once, but the answer comes back twice the lease later (a slow link)."""

    sends = 0

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        Slow.sends += 1
        answer = await super().send(node, path, body)
        await asyncio.sleep(2 * LEASE)
        return answer


@PG
async def test_a_partner_slower_than_the_lease_is_recorded_delivered_once(
    tmp_path: Path, database: Callable[[str], Awaitable[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leases_mod, "POLL_SECONDS", 0.2)
    await provision(tmp_path, database, {"request_timeout_seconds": 30})
    reader = await node_service(tmp_path / f"{KE}.toml", NoPartners())
    ta, tb = Slow(NL), Slow(NL)
    ta.nodes = tb.nodes = {KE: reader}
    a, b = await worker(tmp_path, NL, ta, "wa"), await worker(tmp_path, NL, tb, "wb")
    Slow.sends = 0
    try:
        await a.posting.post(await a.users.get("officer"), "c2c", bulletin("cash"))
        a.sending.start()
        b.sending.start()
        state = None
        for _ in range(60):  # 12 s: six leases, three answers
            await asyncio.sleep(0.2)
            async with a.store.read() as conn:
                state = await conn.scalar(sa.select(outbox.c.state).where(outbox.c.dest == KE))
            if state == "delivered":
                break
        assert state == "delivered", f"still {state} after {Slow.sends} sends of one bulletin"
        assert Slow.sends == 1
    finally:
        await close(a, b, reader)


class Down:
    attempts = 0

    async def fetch(self, node: NodeId, path: str) -> Any:
        raise PeerError("down")

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        Down.attempts += 1
        raise PeerError(f"{node}: connection refused")


async def attempts(folder: Path, workers: int, window: float) -> int:
    Down.attempts = 0
    svcs = [await worker(folder, NL, Down(), f"w{i}-of-{workers}") for i in range(workers)]
    try:
        for svc in svcs:
            svc.sending.start()
        await asyncio.sleep(window)
        return Down.attempts
    finally:
        await close(*svcs)


@PG
async def test_two_workers_retry_a_down_partner_no_more_often_than_one(
    tmp_path: Path, database: Callable[[str], Awaitable[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(leases_mod, "POLL_SECONDS", 0.2)
    await provision(tmp_path, database, {"retry_base_seconds": 0.2, "retry_max_seconds": 60})
    author = await worker(tmp_path, NL, Down(), "poster")
    await author.posting.post(await author.users.get("officer"), "c2c", bulletin("cash"))
    await close(author)
    one = await attempts(tmp_path, 1, 8.0)
    await asyncio.sleep(LEASE + 0.5)  # the lease of the run before has ended
    two = await attempts(tmp_path, 2, 8.0)
    assert two <= one + 2, f"in 8 s one worker retried {one} times, two workers {two} times"


class Toggle(MemoryTransport):
    """The partner, down until the test brings it up."""

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        if node in self.down:
            raise PeerError(f"{node}: connection refused")
        return await super().send(node, path, body)


@PG
async def test_a_partner_back_up_at_another_worker_ends_the_lease_holders_back_off(
    tmp_path: Path, database: Callable[[str], Awaitable[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker that holds a down partner's lease backs off (here 30 s and more); the partner,
    back, pushes to another worker: that one tells the others (LISTEN/NOTIFY), and the holder
    sends at once instead of after its back-off."""
    monkeypatch.setattr(leases_mod, "POLL_SECONDS", 0.2)
    await provision(tmp_path, database, {"retry_base_seconds": 30, "retry_max_seconds": 60})
    reader = await node_service(tmp_path / f"{KE}.toml", NoPartners())
    ta, tb = Toggle(NL), Toggle(NL)
    ta.nodes = tb.nodes = {KE: reader}
    ta.down = tb.down = {KE}
    a, b = await worker(tmp_path, NL, ta, "wa"), await worker(tmp_path, NL, tb, "wb")
    try:
        for svc in (a, b):
            svc.worker_sync.start()
            svc.sending.start()
        await a.posting.post(await a.users.get("officer"), "c2c", bulletin("cash"))

        async def backing_off() -> bool:
            return any(s.outbox.senders[KE].status.backoff_until is not None for s in (a, b))

        await eventually(backing_off, what="a worker backing off from ke-customs")
        holder, other = (a, b) if a.outbox.senders[KE].status.backoff_until is not None else (b, a)
        assert KE not in other.outbox.leases._until
        ta.down = tb.down = set()

        async def delivered() -> bool:
            other.outbox.peer_seen(KE)  # ke-customs keeps pushing to the other worker (told every 5 s)
            async with a.store.read() as conn:
                return await conn.scalar(sa.select(outbox.c.state).where(outbox.c.dest == KE)) == "delivered"

        # The back-off is 30 to 60 s; a first notification sent before the holder listened is sent
        # again 5 s later.
        await eventually(delivered, timeout=20, what="delivered before the 30 s back-off ends")
        assert holder.outbox.senders[KE].status.backoff_until is None
    finally:
        await close(a, b, reader)
