"""Catch-up: pull what this node missed, page by page, from any member that holds it.

Cursors are positions in the partner's own storage order, kept per (partner, channel), so
nothing depends on clocks. Envelopes verify themselves, so it does not matter who relays them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from exchange.errors import ExchangeError
from exchange.model import NodeId
from exchange.node.service import NodeService

log = logging.getLogger("exchange.catchup")

PAGE = 200


class CatchUp:
    """Sweeps every readable channel against every other member: at start, then on a timer."""

    def __init__(self, service: NodeService, interval: float) -> None:
        self.service = service
        self.interval = interval
        self._wake = asyncio.Event()
        self.sweeps = 0

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self.sweep()
            self.sweeps += 1
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)

    async def sweep(self) -> int:
        """Pull every channel this node reads from each other member; return how many were new."""
        fresh = 0
        for state in self.service.channels.all():
            if "read" not in state.rights(self.service.me):
                continue
            for peer in state.members:
                if peer == self.service.me:
                    continue
                try:
                    fresh += await self.pull(peer, state.channel)
                except (ExchangeError, OSError, ValueError, KeyError) as exc:
                    log.info("catch-up of %s from %s stopped: %s", state.channel, peer, exc)
        return fresh

    async def pull(self, peer: str, channel: str) -> int:
        """Pull one channel from one member from our cursor to its end."""
        service = self.service
        after = await service.cursor(peer, channel)
        fresh = 0
        while True:
            page = await service.channels.fetch(
                peer, f"/fed/v1/channels/{channel}/envelopes?after={after}&limit={PAGE}"
            )
            items = page["items"]
            offered = [i for i in items if i["envelope"] is not None]
            held = await service.held([i["id"] for i in offered]) if offered else set()
            new = [i["envelope"] for i in offered if i["id"] not in held]
            if new:
                await service.ingest(NodeId(peer), new, relayed=True, cursor=(channel, int(page["next"])))
                fresh += len(new)
            elif int(page["next"]) != after:
                await service.save_cursor(peer, channel, int(page["next"]))
            after = int(page["next"])
            if not page["more"]:
                return fresh
