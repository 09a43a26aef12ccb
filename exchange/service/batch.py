"""Batch posts for automated systems (advance cargo risk engines and the like): up to MAX_ITEMS
bulletins to one channel in one request, each item all-or-nothing on its own (an item that breaks
a rule fails alone, with its own error), answered per item in order. A batch with an item that
does not have the shape the API describes is malformed and refused whole (the adapter's check).

Idempotent: with a key, item `i` is posted under a key derived from it (`item_key`), so a retry of
the same batch answers each item as the first time did (posted items are not posted twice; a
failed item fails the same way, or now succeeds if what made it fail has changed). Items are posted
concurrently, so the node's group commit writes them in few transactions.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

from exchange.errors import ExchangeError, InvalidInput
from exchange.model import Bulletin
from exchange.service.posting import KEY_PATTERN, Posting
from exchange.service.users import User
from exchange.service.views import Posted

MAX_ITEMS = 1000  # bulletins in one batch
CONCURRENCY = 64  # items in flight at once


def item_key(key: str, index: int) -> str:
    """The idempotency key of item `index` of a batch sent with `key`."""
    if not KEY_PATTERN.fullmatch(key):
        raise InvalidInput(
            "Idempotency-Key must be 16 to 128 characters of letters, digits and -._~:+/= (a UUID will do)"
        )
    return f"batch:{hashlib.sha256(key.encode()).hexdigest()[:40]}:{index}"


class BatchPosting:
    """Many posts in one call, each item on its own."""

    def __init__(self, posting: Posting) -> None:
        self.posting = posting

    async def post_many(
        self, user: User, channel: str, items: Sequence[Bulletin | ExchangeError], *, idempotency_key: str | None
    ) -> list[Posted | ExchangeError]:
        """Post each valid item (an error stands for an item already refused), in order of the answer."""
        user.require_channel(channel)
        if not 1 <= len(items) <= MAX_ITEMS:
            raise InvalidInput(f"a batch holds 1 to {MAX_ITEMS} bulletins")
        keys = [None if idempotency_key is None else item_key(idempotency_key, i) for i in range(len(items))]
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one(i: int, item: Bulletin | ExchangeError) -> Posted | ExchangeError:
            if isinstance(item, ExchangeError):
                return item
            async with gate:
                try:
                    return await self.posting.post(user, channel, item, idempotency_key=keys[i])
                except ExchangeError as exc:
                    return exc

        return list(await asyncio.gather(*(one(i, item) for i, item in enumerate(items))))
