"""A node stops however a request of its sender, or of its catch-up, ends when it is told to stop.
A sender waits for the push in flight (a task of its own); cancelling the sender cancels that
push, and when the push then ended with an error (aiohttp turns a cancellation into a timeout or
connection error when its own timer fires at the same moment, and the transport makes that a
PeerError) or with its answer, the sender took it as an ordinary outcome: it backed off, read its
queue and went on, and the node's stop waited for it for ever. The catch-up loop, the witness
round, webhooks, retention and gossip had the same shape (exchange.clock.stop_requested). Found
as a test that hung under load (tests/test_sync.py, PostgreSQL). Two nodes' application layers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from exchange.errors import PeerError
from exchange.model import Bulletin, NodeId
from exchange.provision import init_federation
from exchange.service.node import NodeService
from tests.conftest import DEFAULT_NODES, write_federation
from tests.service.lone_node import node_service
from tests.service.test_outbox import MemoryTransport
from tests.test_delivery import BULLETIN

A, B = "nl-customs", "ke-customs"


class StuckTransport(MemoryTransport):
    """A's pushes (or, `pulls`, its catch-up fetches) hang until cancelled, and then end as `ending`
    says: an error, or an answer; the other kind of request fails at once."""

    def __init__(self, me: str, ending: str, *, pulls: bool = False) -> None:
        super().__init__(me)
        self.ending = ending
        self.pulls = pulls
        self.pushing = asyncio.Event()

    async def fetch(self, node: NodeId, path: str) -> Any:
        if not self.pulls:
            raise PeerError(f"{node}: unreachable")
        return await self.send(node, path, b"")

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        if self.pulls and body:
            raise PeerError(f"{node}: unreachable")
        self.pushing.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if self.ending == "cancelled":
                raise
            if self.ending == "error":
                raise PeerError(f"{node}: TimeoutError") from None  # what aiohttp may make of it
            return {
                "txn": "t",
                "receipts": [],
                "items": [],
                "next": 0,
                "more": False,
            }  # the answer came as the stop did
        raise AssertionError("unreachable")


@pytest.fixture(params=["push-error", "push-answer", "pull-error", "pull-answer"])
async def stuck(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[tuple[NodeService, StuckTransport]]:
    folder = tmp_path / "nodes"
    channel = {"id": "c2c", "owner": A, "agencies": ["customs"], "members": {A: ["read", "post", "admin"], B: ["read"]}}
    write_federation(folder, {n: DEFAULT_NODES[n] for n in (A, B)}, [channel], {}, {})
    await init_federation(folder)
    kind, ending = request.param.split("-")
    transport = StuckTransport(A, ending, pulls=kind == "pull")
    a = await node_service(folder / f"{A}.toml", transport)
    try:
        yield a, transport
    finally:
        await a.store.close()


async def test_a_node_stops_while_a_push_or_a_pull_is_in_flight(stuck: tuple[NodeService, StuckTransport]) -> None:
    a, transport = stuck
    officer = await a.users.get("officer")
    await a.post(officer, "c2c", Bulletin.model_validate(BULLETIN))
    await a.start()
    await asyncio.wait_for(transport.pushing.wait(), 10)
    loop = "catch-up" if transport.pulls else f"sender-{B}"
    task = next(t for t in asyncio.all_tasks() if t.get_name() == loop)
    stopping = asyncio.ensure_future(a.stop())
    done, _ = await asyncio.wait([stopping], timeout=10)
    if not done:  # before: the sender went on after it was cancelled, and the stop waited for it
        transport.ending = "cancelled"  # so that the test ends: its next push can be cancelled
        while not stopping.done():
            task.cancel()
            await asyncio.sleep(0.5)
        pytest.fail(f"the node did not stop: its {loop} loop went on after it was cancelled")
    await stopping
    assert task.cancelled()
