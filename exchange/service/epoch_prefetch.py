"""Channel epochs made (owner) and fetched (readers) ahead of the bulletins that need them, so
that the first bulletin after a change of readers waits for neither (docs/protocol.md, 15.1
"When"; docs/operations.md, "Epochs ahead of posts"). What a bulletin makes or fetches on demand
(exchange.service.epochs) stays as it was: this does the same work earlier."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from dataclasses import dataclass

from exchange.errors import ExchangeError
from exchange.model import NodeId
from exchange.protocol.channel import ChannelState
from exchange.protocol.envelope_v2 import readers_steady
from exchange.service.channels import ChannelBook
from exchange.service.epochs import EpochBook
from exchange.store import Store
from exchange.store.workers import Role

log = logging.getLogger("exchange.epochs")

SPREAD_PER_READER = 0.1  # seconds of a reader's random delay per reader of the channel...
SPREAD_MAX = 30.0  # ...up to this: 200 readers ask over 20 s, 5 per 0.5 s
RETRY_FIRST = 10.0  # a try that leaves the channel without its epoch is made again after 10 s,
TRIES = 4  # then 20 and 40 s, then left to the first bulletin: the tries per state of a channel


@dataclass
class _Watch:
    mark: tuple[int, int]  # the state's position and the latest epoch held (-1: none)
    due: float  # when to look at the channel next (inf: nothing to do until the mark changes)
    tries: int = 0


class EpochPrefetch:
    """Keeps each channel's epoch ready ahead of its bulletins: made at the owner, fetched by readers."""

    def __init__(
        self,
        me: NodeId,
        store: Store,
        channels: ChannelBook,
        epochs: EpochBook,
        settle: float,
    ) -> None:
        self.me = me
        self.store = store
        self.channels = channels
        self.epochs = epochs
        self.settle = settle
        self._watch: dict[str, _Watch] = {}

    @property
    def enabled(self) -> bool:
        return self.settle > 0 and self.epochs.announce

    async def run(self) -> None:
        """The loop: one worker of a node runs it (exchange.store.workers); a failure is logged."""
        if not self.enabled:
            return
        role = Role(self.store.engine, "epoch-prefetch")
        try:
            while True:
                await asyncio.sleep(self.settle)
                try:
                    if await role.held():
                        await self.look()
                except Exception:
                    log.exception("%s: the look for epochs to make or fetch failed", self.me)
        finally:
            await role.release()

    async def look(self, now: float | None = None) -> int:
        """Look at every channel this node reads; make or fetch the epochs now due. How many tried.

        A channel whose state or latest epoch changed is looked at again once it held still for
        `_delay`; one that needs an epoch is tried at most TRIES times per state, a failure of one
        stopping neither the others nor the next look."""
        now = time.monotonic() if now is None else now
        tried = 0
        for channel in [s.channel for s in self.channels.all()]:
            state = self.channels.state(channel)  # as it is now: a try before this one may have taken seconds
            if state.closed or "read" not in state.rights(self.me):
                self._watch.pop(channel, None)
                continue
            latest = self.epochs.latest(channel)
            mark = (state.pos, latest.n if latest is not None else -1)
            watch = self._watch.get(channel)
            if watch is None or watch.mark != mark:  # new, or changed: wait for it to hold still
                self._watch[channel] = _Watch(mark, now + self._delay(state))
                continue
            if now < watch.due:
                continue
            if not self._needed(state):
                watch.due = math.inf
                continue
            watch.tries += 1
            watch.due = now + RETRY_FIRST * 2 ** (watch.tries - 1) if watch.tries < TRIES else math.inf
            tried += 1
            try:
                await self._try(state)
            except (ExchangeError, OSError) as exc:
                log.info("%s: no epoch of %s ahead of its bulletins now: %s", self.me, channel, exc)
            except Exception:
                log.exception("%s: making or fetching the epoch of %s failed", self.me, channel)
        return tried

    def _delay(self, state: ChannelState) -> float:
        """The owner makes the epoch once the state held still; each reader waits a random share
        of the spread more, so that the owner is not asked by every reader at once."""
        if state.owner == self.me:
            return self.settle
        spread = min(SPREAD_MAX, SPREAD_PER_READER * len(state.readers))
        return self.settle + random.uniform(0.0, spread)

    def _needed(self, state: ChannelState) -> bool:
        """Whether this node lacks an epoch for `state`'s readers: its latest has other readers, or
        readers changed and changed back since it was made (`readers_steady`: an author does not
        post under it then, so the owner makes the next one; else members would post v1)."""
        latest = self.epochs.latest(state.channel)
        if latest is None or tuple(latest.readers) != tuple(state.readers):
            return True
        between = range(latest.state.pos + 1, state.pos)
        return not readers_steady(latest, (self.channels.state(state.channel, pos) for pos in between))

    async def _try(self, state: ChannelState) -> None:
        if state.owner == self.me:
            await self.epochs.make_current(state)
        else:
            await self.epochs.pull_quietly(state.owner, state.channel)


__all__ = ["EpochPrefetch"]
