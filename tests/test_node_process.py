"""The process that runs nodes: what `exchange node run` and `exchange federation up` do beyond
starting them."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from exchange.cli.main import _serve
from exchange.config import NodeConfig
from exchange.provision import init_federation
from tests.conftest import DEFAULT_NODES, eventually, write_federation


@pytest.fixture
def thawed() -> Iterator[None]:
    """What a test freezes is given back to the collector after it: this process goes on."""
    assert gc.get_freeze_count() == 0
    try:
        yield
    finally:
        gc.unfreeze()


async def test_a_served_node_is_put_out_of_the_collectors_reach_once_started(tmp_path: Path, thawed: None) -> None:
    """A full collection walks every object the collector tracks, with the event loop standing
    still: in a process of 25 nodes, 0.6 to 2.2 s each (bench/simulate.py). What the nodes
    started with lives as long as the process, so `_serve` freezes it after each start."""
    folder = tmp_path / "nodes"
    write_federation(folder, {"nl-customs": DEFAULT_NODES["nl-customs"]}, [], {})
    await init_federation(folder)
    serving = asyncio.create_task(_serve([NodeConfig.load(folder / "nl-customs.toml", environ={})]))
    loop = asyncio.get_running_loop()
    try:

        async def frozen() -> bool:
            assert not serving.done(), serving
            return gc.get_freeze_count() > 0

        await eventually(frozen, timeout=30, what="the started node frozen")
        assert gc.get_freeze_count() > 10_000  # the modules and the node, not a few objects
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
