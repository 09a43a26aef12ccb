"""A push's transaction (docs/protocol.md, the federation transaction): its items cut to one
request, its id and its body, and the bodies kept to be sent again to the channel's other readers."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from exchange.service.outbox_refs import OutItem

MAX_TRANSACTION_BYTES = 32 * 1024 * 1024  # half the receiver's request limit
BODIES_KEPT = 16 * 1024 * 1024  # transaction bodies kept to be sent again to other partners (`Bodies`)


def within_bytes(batch: list[OutItem], limit: int = MAX_TRANSACTION_BYTES) -> list[OutItem]:
    """The longest head of `batch` that fits in one request (always at least one item)."""
    return batch[: head_within((len(item.data) for item in batch), limit)]


def head_within(sizes: Iterable[int], limit: int) -> int:
    """How many items of these sizes go in one request of `limit` bytes (at least one, if any)."""
    total = count = 0
    for size in sizes:
        total += size + 1
        if total > limit and count:
            break
        count += 1
    return count


def transaction_id(item_keys: list[str]) -> str:
    """The same batch always gets the same id, so a retried transaction is recognisable."""
    return hashlib.sha256("\n".join(item_keys).encode()).hexdigest()[:32]


class Bodies:
    """The bodies of the transactions last sent, by id and size. The readers of a channel are sent
    the same batches (at 200 readers, each post's envelope goes to 199 partners, read for all of
    them at once): the body of one (50 envelopes of a channel of 200: about 70 KB) is joined once
    and sent to each, not joined again for each. A transaction's id names its items
    (`transaction_id`), and an item's bytes do not change once stored, so a kept body is that of
    any batch with the same id; its size is in the key as well."""

    def __init__(self, limit: int = BODIES_KEPT) -> None:
        self.limit = limit
        self._kept: dict[tuple[str, int], bytes] = {}  # least recently used first
        self._bytes = 0
        self._sending: dict[tuple[str, int], list[Any]] = {}  # body, pushes sending it

    @contextlib.contextmanager
    def sending(self, txn: str, batch: Sequence[OutItem]) -> Iterator[bytes]:
        """The body of a push, shared with every push sending the same batch meanwhile, whatever its
        size. A body over a quarter of the bound is not kept (`body`), and was joined for each reader:
        a post of an 8 MiB envelope to a channel of 200 held 199 copies at once, 1.6 GiB (found by a
        read-only review). It is now joined once for the pushes under way, and dropped with the last."""
        key = (txn, sum(len(i.data) for i in batch))
        held = self._sending.get(key)
        if held is None:
            held = self._sending[key] = [self.body(txn, batch), 0]
        held[1] += 1
        try:
            yield held[0]
        finally:
            held[1] -= 1
            if not held[1]:
                del self._sending[key]

    def body(self, txn: str, batch: Sequence[OutItem]) -> bytes:
        key = (txn, sum(len(i.data) for i in batch))
        if (kept := self._kept.pop(key, None)) is not None:
            self._kept[key] = kept  # the most recently used is dropped last
            return kept
        made = transaction_body(txn, batch)
        if len(made) <= self.limit // 4:
            self._kept[key] = made
            self._bytes += len(made)
            while self._bytes > self.limit:
                self._bytes -= len(self._kept.pop(next(iter(self._kept))))
        return made


def transaction_body(txn: str, batch: Sequence[OutItem]) -> bytes:
    """The federation transaction: events, then envelopes, then pushed receipts."""

    def joined(kind: str) -> bytes:
        return b",".join(i.data for i in batch if i.kind == kind)

    return b'{"txn":"%s","events":[%s],"envelopes":[%s],"receipts":[%s]}' % (
        txn.encode(),
        joined("event"),
        joined("envelope"),
        joined("receipt"),
    )


__all__ = ["MAX_TRANSACTION_BYTES", "Bodies", "head_within", "transaction_body", "transaction_id", "within_bytes"]
