"""An epoch record fetched on demand (docs/protocol.md, 15.8 rule 4): a received v2 envelope cites
one this node lacks, and it asks the pusher, the owner and the members, each once, for it.

A failed find is remembered a while (`Misses`): the sender retries a 503, and each retry, or a
flood of envelopes citing numbers nobody holds, would otherwise send this node round every member
again. A round takes every record any source has after the latest held (`EpochBook.pull`, and
records are held in order from 0), so after a failed one no source had any later number either:
what is remembered is the channel's first missing number, and an envelope citing it or any
higher one is answered without a round, whatever number it makes up: only the channel's owner is
asked again, at most once each RECHECK_SECONDS, so that an epoch it makes meanwhile (which any
member's made-up number would otherwise keep out for the whole interval) comes at its first
envelope after that. Catch-up (`EpochBook.pull_quietly`) and the epochs fetched ahead of posts
(exchange.service.epoch_prefetch) do not go through here, so a node that missed an epoch change
still gets it from any member.
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
MISS_SIZE = 1024  # channels remembered so at most: the oldest are forgotten first
RECHECK_SECONDS = 2.0  # within a remembered miss, the owner alone is asked again at most this often


class Misses:
    """Per channel, the first epoch number that no source held when last asked, and when that was."""

    def __init__(self, seconds: float = MISS_SECONDS, size: int = MISS_SIZE, recheck: float = RECHECK_SECONDS) -> None:
        self.seconds = seconds
        self.size = size
        self.recheck = recheck
        self._at: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._rechecked: dict[str, float] = {}  # when the owner was last asked within a miss

    def recent(self, channel: str, n: int) -> bool:
        """Whether a find of epoch `n` of `channel`, or of one before it, failed less than
        `seconds` ago: then no source held `n` either."""
        held = self._at.get(channel)
        if held is None:
            return False
        first, at = held
        if time.monotonic() - at < self.seconds:
            return n >= first
        del self._at[channel]
        self._rechecked.pop(channel, None)
        return False

    def recheck_due(self, channel: str) -> bool:
        """Whether the owner of `channel` may be asked again now (and if so, it counts as asked)."""
        now = time.monotonic()
        if now - self._rechecked.get(channel, -self.recheck) < self.recheck:
            return False
        self._rechecked[channel] = now
        return True

    def add(self, channel: str, first: int) -> None:
        """No source held epoch `first` of `channel`, nor any after it (the owner was asked now)."""
        self._at[channel] = (first, time.monotonic())
        self._rechecked[channel] = time.monotonic()
        self._at.move_to_end(channel)
        while len(self._at) > self.size:
            self._rechecked.pop(self._at.popitem(last=False)[0], None)


async def find_epoch(book: EpochBook, channel: str, n: int, sources: Sequence[str]) -> EpochRecord:
    """Epoch `n` of a channel: held, or fetched from the first of `sources` that has it, each
    asked once; StateUnavailable if none has it, and then, for `book.misses.seconds`, at once."""
    if book.record(channel, n) is None or book.key(channel, n) is None:
        await book.refresh(channel)  # another worker may have taken it
    record = book.record(channel, n)
    if record is not None:
        return record
    if book.misses.recent(channel, n):
        if book.misses.recheck_due(channel):  # the owner alone: one request, not a round
            owner = book.channels.state(channel).owner
            record = await _asked(book, owner, channel, n) if owner != book.me else None
            if record is not None:
                return record
        raise StateUnavailable(
            f"epoch {n} of channel {channel!r} is not held, and no member had it, or one before it,"
            f" when last asked (asked again after {book.misses.seconds:g} s)"
        )
    for source in dict.fromkeys(sources):
        if source == book.me:
            continue
        record = await _asked(book, source, channel, n)
        if record is not None:
            return record
    latest = book.latest(channel)  # what the round brought: none had a later one
    book.misses.add(channel, latest.n + 1 if latest is not None else 0)
    log.info("%s: epoch %d of %s is held by none of %s", book.me, n, channel, ", ".join(dict.fromkeys(sources)))
    raise StateUnavailable(f"epoch {n} of channel {channel!r} is not held and could not be fetched")


async def _asked(book: EpochBook, source: str, channel: str, n: int) -> EpochRecord | None:
    """Epoch `n` of `channel` once `source`'s records after the latest held are taken, if it had it."""
    try:
        await book.pull(source, channel)
    except PeerError as exc:
        log.info("%s: epochs of %s from %s: %s", book.me, channel, source, exc.detail)
    return book.record(channel, n)
