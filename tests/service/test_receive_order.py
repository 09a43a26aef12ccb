"""A partner's transactions are applied in the order they arrived, one at a time, and a request the
partner dropped while it waited its turn (aiohttp cancels its handler) neither breaks the one
before it nor lets the one after it jump the queue (found by bench/simulate.py at 50 nodes)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from exchange.model import NodeId
from tests.service.lone_node import lone_node

PEER = NodeId("ke-customs")


async def test_a_dropped_waiter_breaks_nothing_and_keeps_the_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async for svc in lone_node(tmp_path / "nodes"):
        receiving = svc.receiving
        applied: list[str] = []
        gate = asyncio.Event()

        async def apply(
            peer: NodeId,
            raw_events: Any,
            screened: Any,
            raw_receipts: Any,
            applied: list[str] = applied,
            gate: asyncio.Event = gate,
        ) -> list[Any]:
            name = raw_events[0]
            if name == "first":
                await gate.wait()
            applied.append(name)
            return []

        monkeypatch.setattr(receiving, "_apply", apply)
        first = asyncio.create_task(receiving.receive(PEER, ["first"], []))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(receiving.receive(PEER, ["second"], []))
        await asyncio.sleep(0.05)
        third = asyncio.create_task(receiving.receive(PEER, ["third"], []))
        await asyncio.sleep(0.05)
        second.cancel()  # the partner dropped the second request while it waited
        await asyncio.sleep(0.05)
        assert applied == [] and not third.done()  # the third still waits for the first
        gate.set()
        assert await first == []  # the first ends normally (it used to answer 500)
        assert await third == []
        with pytest.raises(asyncio.CancelledError):
            await second
        assert applied == ["first", "third"]
        assert PEER not in receiving._turns  # nothing left waiting


async def test_a_provisioned_channel_of_two_hundred_members_is_read(tmp_path: Path) -> None:
    """`federation init` writes a channel of N members as 2N - 1 events; at 200 members the file is
    denser in JSON values than the budget for partners' requests (bench/simulate.py found it)."""
    import json

    from exchange.keystore import read_provisioned_channels

    async for svc in lone_node(tmp_path / "nodes"):
        events = [e.model_dump(mode="json") for e in svc.channels.events("c2c")]
        folder = tmp_path / "channels"
        folder.mkdir()
        (folder / "global.json").write_text(json.dumps(events * 400))  # as dense as a 200-member log
        (logged,) = read_provisioned_channels(folder)
        assert len(logged) == 400 * len(events)
