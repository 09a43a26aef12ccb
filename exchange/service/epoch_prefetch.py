"""Channel epochs made and fetched before a bulletin needs them (docs/protocol.md, 15.1 "When").

An epoch is otherwise made when the first v2 bulletin after a change of readers is posted, and
each reader fetches it when that bulletin arrives: at 200 readers the first alert waits for 199
announcements asked and 199 wraps at the owner, then for every reader's fetch of a page of about
0.7 MB and its check of 198 announcements (bench/simulate.py: 1.2 to 7.5 s, against about 1 s for
the alerts after it). Here, once a channel's state has held still for `settle` seconds, its owner
makes the epoch for it, and each reader fetches it from the owner after a further delay drawn at
random over a spread that grows with the channel, so that 199 readers do not ask at the same
moment. What is made or fetched on demand (exchange.service.epochs) stays as it was: this only
does the same work earlier, off the path of a bulletin.

Cheap when idle: a look every `settle` seconds compares each channel's state position, latest
epoch and roster version with the last look's, and does nothing more for a channel whose are
unchanged. A reader's test of need reads no announcement: it fetches when its latest epoch's
readers are not the state's (a change of a reader's wrap key alone is left to the first bulletin).
A try that leaves the channel without its epoch (a reader not up yet, a reader without v2, the
owner unreachable) is made again after a delay that doubles up to `retry_max`.
"""

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
from exchange.protocol.roster import Federation
from exchange.service.channels import ChannelBook
from exchange.service.epochs import EpochBook
from exchange.store import Store
from exchange.store.workers import Role

log = logging.getLogger("exchange.epochs")

SPREAD_PER_READER = 0.1  # seconds of a reader's random delay per reader of the channel...
SPREAD_MAX = 30.0  # ...up to this: 200 readers ask over 20 s, 5 per 0.5 s


@dataclass
class _Watch:
    mark: tuple[int, int, int]  # the state's position, the latest epoch held (-1: none), the roster version
    due: float  # when to look at the channel next (inf: nothing to do until the mark changes)
    backoff: float


class EpochPrefetch:
    """Keeps each channel's epoch ready ahead of its bulletins: made at the owner, fetched by readers."""

    def __init__(
        self,
        me: NodeId,
        store: Store,
        fed: Federation,
        channels: ChannelBook,
        epochs: EpochBook,
        settle: float,
        retry_max: float = 600.0,
    ) -> None:
        self.me = me
        self.store = store
        self.fed = fed
        self.channels = channels
        self.epochs = epochs
        self.settle = settle
        self.retry_max = retry_max
        self._watch: dict[str, _Watch] = {}
        self.tries = 0  # makes and fetches tried (for tests and the bench)

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
        """Look at every channel this node reads; make or fetch the epochs now due. How many tried."""
        now = time.monotonic() if now is None else now
        tried = 0
        for state in self.channels.all():
            if state.closed or "read" not in state.rights(self.me):
                self._watch.pop(state.channel, None)
                continue
            latest = self.epochs.latest(state.channel)
            mark = (state.pos, latest.n if latest is not None else -1, self.fed.roster.version)
            watch = self._watch.get(state.channel)
            if watch is None or watch.mark != mark:  # new, or changed: wait for it to hold still
                self._watch[state.channel] = _Watch(mark, now + self._delay(state), self.settle)
                continue
            if now < watch.due:
                continue
            if not self._needed(state):
                watch.due = math.inf
                continue
            tried += 1
            self.tries += 1
            await self._try(state)
            if self._needed(state):
                watch.backoff = min(watch.backoff * 2, self.retry_max)
                watch.due = now + watch.backoff
            else:
                watch.due = math.inf
        return tried

    def _delay(self, state: ChannelState) -> float:
        """The owner makes the epoch once the state held still; each reader waits a random share
        of the spread more, so that the owner is not asked by every reader at once."""
        if state.owner == self.me:
            return self.settle
        spread = min(SPREAD_MAX, SPREAD_PER_READER * len(state.readers))
        return self.settle + random.uniform(0.0, spread)

    def _needed(self, state: ChannelState) -> bool:
        """Whether this node lacks an epoch for `state`'s readers."""
        latest = self.epochs.latest(state.channel)
        return latest is None or tuple(latest.readers) != tuple(state.readers)

    async def _try(self, state: ChannelState) -> None:
        try:
            if state.owner == self.me:
                await self.epochs.make_current(state)
            else:
                await self.epochs.pull_quietly(state.owner, state.channel)
        except (ExchangeError, OSError) as exc:
            log.info("%s: no epoch of %s ahead of its bulletins now: %s", self.me, state.channel, exc)


__all__ = ["EpochPrefetch"]
