"""Workers of one node over PostgreSQL follow each other's channel events (exchange.service.
worker_sync, exchange.store.workers.Changes), from an operator's side. Found by a read-only review:

- a worker that starts while the others write missed every channel event committed between its
  load and its first LISTEN: the first connection re-read nothing, and with no later event on
  that channel it kept acting on the old membership for good;
- such a stale worker, handed an envelope citing the newer state, fetched the "missing" events
  from the owner and stored them again: IntegrityError, a 500, for every later envelope of it;
- a notification that came as a refresh of its channel ended was put aside for a loop that had
  ended, and never followed.

Workers are NodeService instances in this process over one PostgreSQL database."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from exchange.model import NodeId, StateRef
from exchange.service.node import NodeService
from exchange.service.worker_sync import WorkerSync
from tests.conftest import eventually
from tests.service.lone_node import NoPartners
from tests.test_worker_leases import KE, NL, PG, close, provision, worker

CHANGE = {"type": "set-rights", "node": KE, "rights": ["read", "post"]}


class Owner(NoPartners):
    """Serves the owner's channel log from one worker, as its federation API does."""

    def __init__(self) -> None:
        self.worker: NodeService | None = None

    async def fetch(self, node: NodeId, path: str) -> Any:
        assert self.worker is not None and path.startswith("/fed/v1/channels/c2c/events?after=")
        events = self.worker.channels.events_for_peer(KE, "c2c", int(path.rsplit("=", 1)[1]))
        return {"events": [json.loads(e.model_dump_json()) for e in events]}


@PG
async def test_a_worker_that_starts_takes_the_events_committed_since_its_load(
    tmp_path: Path, database: Callable[[str], Awaitable[str]]
) -> None:
    await provision(tmp_path / "nodes", database, {})
    owner = Owner()
    first = await worker(tmp_path / "nodes", NL, NoPartners(), "w1")
    second = await worker(tmp_path / "nodes", NL, owner, "w2")  # loaded
    try:
        loaded = second.channels.state("c2c").pos
        admin = await first.users.get("admin")
        await first.channels.change(admin, "c2c", dict(CHANGE))  # committed before `second` listens
        assert second.channels.state("c2c").pos == loaded
        second.worker_sync.start()

        async def caught_up() -> bool:
            return second.channels.state("c2c").pos == first.channels.state("c2c").pos

        await eventually(caught_up, timeout=15, what="the event committed before the worker listened")
        assert "post" in second.channels.state("c2c").members[NodeId(KE)]
    finally:
        await close(first, second)


@PG
async def test_a_stale_worker_handed_a_newer_state_reads_it_from_the_database(
    tmp_path: Path, database: Callable[[str], Awaitable[str]]
) -> None:
    await provision(tmp_path / "nodes", database, {})
    owner = Owner()
    first = await worker(tmp_path / "nodes", NL, NoPartners(), "w1")
    second = await worker(tmp_path / "nodes", NL, owner, "w2")  # not listening: stale on purpose
    owner.worker = first
    try:
        admin = await first.users.get("admin")
        await first.channels.change(admin, "c2c", dict(CHANGE))
        newer = first.channels.state("c2c")
        ref = StateRef(owner=NL, pos=newer.pos, hash=newer.hash)
        state = await second.channels.ensure("c2c", ref)  # before: IntegrityError (a 500)
        assert (state.pos, state.hash) == (newer.pos, newer.hash)
    finally:
        await close(first, second)


async def test_a_notification_that_comes_as_a_refresh_ends_is_followed() -> None:
    """asyncpg hands a notification over with `call_soon`, often in the step that ends the
    refresh of its channel; before, the refresh's task was still named running then, so the
    notification was put aside for a loop that had ended."""
    sync = WorkerSync.__new__(WorkerSync)  # `_once` alone: no store, no listener
    sync._running, sync._again = {}, set()
    calls: list[int] = []
    loop = asyncio.get_running_loop()

    async def refresh() -> None:
        calls.append(len(calls))
        if len(calls) == 1:  # a notification of the same channel, handed over as this one ends
            loop.call_soon(lambda: sync._once("channel:c2c", refresh))

    sync._once("channel:c2c", refresh)

    async def twice() -> bool:
        return len(calls) == 2

    await eventually(twice, timeout=5, what="the refresh for the notification that came as the first ended")
    assert not sync._running and not sync._again
