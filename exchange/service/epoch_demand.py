"""An epoch record fetched on demand (docs/protocol.md, 15.8 rule 4): a received v2 envelope cites
one this node lacks, and it asks the pusher, the owner and the members, each once, for it.

A failed find is remembered a while (`Misses`): the sender retries a 503, and each retry, or a
flood of envelopes citing the same number nobody holds, would otherwise send this node round
every member again. Catch-up (`EpochBook.pull_quietly`) does not go through here, so a node that
missed an epoch change still gets it from any member at its next sweep.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from exchange.errors import PeerError, StateUnavailable
from exchange.protocol.epoch_model import EpochRecord

if TYPE_CHECKING:
    from exchange.service.epochs import EpochBook

log = logging.getLogger("exchange.epochs")

MISS_SECONDS = 30.0  # how long a find that no source answered is not tried again
MISS_SIZE = 1024  # (channel, n) remembered so at most: the oldest are forgotten first


class Misses:
    """The (channel, n) of epochs that no source held when last asked, and when that was."""

    def __init__(self, seconds: float = MISS_SECONDS, size: int = MISS_SIZE) -> None:
        self.seconds = seconds
        self.size = size
        self._at: OrderedDict[tuple[str, int], float] = OrderedDict()

    def recent(self, channel: str, n: int) -> bool:
        """Whether a find of epoch `n` of `channel` failed less than `seconds` ago."""
        at = self._at.get((channel, n))
        if at is None:
            return False
        if time.monotonic() - at < self.seconds:
            return True
        del self._at[channel, n]
        return False

    def add(self, channel: str, n: int) -> None:
        self._at[channel, n] = time.monotonic()
        self._at.move_to_end((channel, n))
        while len(self._at) > self.size:
            self._at.popitem(last=False)


async def find_epoch(book: EpochBook, channel: str, n: int, sources: Sequence[str]) -> EpochRecord:
    """Epoch `n` of a channel: held, or fetched from the first of `sources` that has it, each
    asked once; StateUnavailable if none has it, and then, for `book.misses.seconds`, at once."""
    if book.record(channel, n) is None or book.key(channel, n) is None:
        await book.refresh(channel)  # another worker may have taken it
    record = book.record(channel, n)
    if record is not None:
        return record
    if book.misses.recent(channel, n):
        raise StateUnavailable(
            f"epoch {n} of channel {channel!r} is not held, and no member had it when last asked"
            f" (asked again after {book.misses.seconds:g} s)"
        )
    for source in dict.fromkeys(sources):
        if source == book.me:
            continue
        try:
            await book.pull(source, channel)
        except PeerError as exc:
            log.info("%s: epochs of %s from %s: %s", book.me, channel, source, exc.detail)
        record = book.record(channel, n)
        if record is not None:
            return record
    book.misses.add(channel, n)
    log.info("%s: epoch %d of %s is held by none of %s", book.me, n, channel, ", ".join(dict.fromkeys(sources)))
    raise StateUnavailable(f"epoch {n} of channel {channel!r} is not held and could not be fetched")
