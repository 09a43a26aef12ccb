"""One partner's sender: delivers everything queued for it, in order, in batches, until cancelled.

It retries with capped exponential backoff and jitter when the partner fails; any request from
the partner wakes it at once. A failure of this node's own store (busy: every pooled connection
taken), or an answer refused because this node holds as much of all partners' answers as it may
(`AnswersFull`), is not the partner's: it retries after the base delay and leaves the partner's
backoff as it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time

from exchange.clock import cancel_and_wait, stop_requested, timestamp, utc_now, wait_event
from exchange.errors import AnswersFull, PeerError, PeerRefused, Unavailable
from exchange.model import NodeId
from exchange.service.outbox import (
    FED_ENVELOPES,
    RETRYABLE_REFUSALS,
    Outbox,
    OutItem,
    PeerStatus,
    transaction_id,
    within_bytes,
)

log = logging.getLogger("exchange.outbox")
BUSY_RETRIES = 5  # AnswersFull retried after the base delay, in a row, before the sender backs off

# How long after serving a partner a full catch-up page its sender holds back its pushes: the
# partner is behind by more than a page and pulls what is queued for it; pushing the same
# envelopes as well would have it receive, parse and drop each one twice (bench/catchup.py).
PULL_HOLD_SECONDS = 10.0

# A batch this large or larger, or a full one, has the next one read and sent while it travels
# (two in flight); after a smaller one the sender waits for its receipts first, and sends what was
# queued meanwhile as one batch. A partner's pushes are then few and full when many partners share
# one author (a channel of 200: each post woke 199 senders for a push each of one or two bulletins,
# two in flight, which cost the author more than their bulletins did), and pipelined when one
# partner's queue is long (bench/README.md, fanout_wired.py).
PIPELINE_FROM = 16
# ... and not while many partners are pushed to (`Outbox.many_pushes`). When many partners share
# one author (a burst to a channel of 200), their pushes keep its CPU busy already: a second one in
# flight to each of them opened a second connection to each (a TLS handshake apiece) and split the
# gathered reads and writes into more, smaller jobs, for no earlier delivery (bench/README.md,
# 2026-12-05: 300 posts, 18.7-22.7 ms per bulletin pipelined, 13.5 not).


class Sender:
    """Delivers everything queued for one destination, in order, until cancelled."""

    def __init__(self, outbox_: Outbox, peer: NodeId) -> None:
        self.outbox = outbox_
        self.peer = peer
        self.status = PeerStatus(peer)
        self._work = asyncio.Event()
        # True while the queue may hold items no read has seen: work queued since the last read
        # began, a read that filled its batch, a failure (what failed stays queued), a poll. The
        # queue is read only then: a sender woken by one post reads it once, not after each send.
        self._stale = True
        self._contact = asyncio.Event()
        self._busy = 0  # AnswersFull in a row (`_back_off`)
        self._single = False
        self._flight: asyncio.Task[int] | None = None  # the last batch sent: to the peer, then its receipts
        self._pulling_until = 0.0  # time.monotonic(): the peer pulls what is queued (PULL_HOLD_SECONDS)

    def wake(self) -> None:
        """New work is queued."""
        self._stale = True
        self._work.set()

    def peer_seen(self) -> None:
        """The peer just talked to us, so it is up: retry now rather than after the backoff."""
        self._contact.set()
        self.wake()

    def peer_pulled(self, more: bool) -> None:
        """The peer was served a catch-up page. A full one (`more`): it is behind by more than a
        page and pulls what is queued here, so no new batch goes to it until it is served a page
        that is not full, or for PULL_HOLD_SECONDS after the last full one. What it pulls is
        marked delivered by the receipts it sends; what is left is pushed after."""
        if more:
            self._pulling_until = time.monotonic() + PULL_HOLD_SECONDS
        elif self._pulling_until:
            self._pulling_until = 0.0
            self.wake()

    def _pulling(self) -> float:
        """Seconds left of holding back for a pulling peer; 0 when not."""
        return max(0.0, self._pulling_until - time.monotonic())

    def pull_hold_until(self) -> str | None:
        """When the hold for a pulling peer ends, as a timestamp; None when there is none."""
        left = self._pulling()
        return timestamp(utc_now() + dt.timedelta(seconds=left)) if left else None

    async def run(self) -> None:
        """The sender loop: no failure of one iteration, the database's included, ends it."""
        ahead: list[OutItem] = []  # the next batch, already read during the last send
        while True:
            if stop_requested():  # cancelled in a wait that ended otherwise (`stop_requested`)
                raise asyncio.CancelledError
            self._work.clear()
            batch: list[OutItem] = []
            try:
                batch, ahead = ahead, []
                if batch and self._pulling():  # it began to pull meanwhile: what was read ahead stays queued
                    batch, self._stale = [], True
                if not batch:
                    await self._drain()  # what is in flight, before the queue is read afresh
                    if hold := self._pulling():
                        await wait_event(self._work, hold)  # woken by a page that is not full, or new work
                        continue
                    if not self._stale:  # read to the end, and nothing queued since
                        self.status.queued = 0
                        await self._idle()
                        continue
                    if not await self.outbox.leases.claim(self.peer):  # another worker sends to it
                        await self._idle()
                        continue
                    batch = await self._next_batch()
                    if not batch:
                        continue
                # Marked just before it goes, not when it was read: what was cancelled (or rejected)
                # meanwhile is dropped, and a batch read ahead may have waited for a send to land.
                batch = await self.outbox.mark_sent(self.peer, batch)
                if batch:
                    ahead = await self._send(batch)
            except asyncio.CancelledError:
                if self._flight is not None:
                    self._flight.cancel()
                raise
            except Exception as exc:  # whatever the peer or the database did, retry later
                if stop_requested():
                    raise asyncio.CancelledError from exc
                ahead = []
                self._stale = True  # what failed stays queued, and goes again
                with contextlib.suppress(Exception):
                    await self._drain()
                await self._back_off(exc, len(batch))
            finally:
                self.status.in_flight = 0

    async def _idle(self) -> None:
        """Wait to be woken; shared by workers, or for a poll (others queue items too), after
        which the queue is read again."""
        await self.outbox.leases.idle(self._work)
        self._stale = True

    async def _drain(self) -> None:
        """Wait for the batch in flight to be stored at the peer and its receipts here; raise if
        either failed."""
        flight, self._flight = self._flight, None
        if flight is not None:
            await self._landed(flight)

    async def _landed(self, flight: asyncio.Task[int]) -> None:
        self.status.delivered += await flight
        self.status.failures = self._busy = 0
        self.status.last_success = timestamp()

    async def _next_batch(self, after: int = 0) -> list[OutItem]:
        size = 1 if self._single else self.outbox.config.batch_size
        self._stale = False  # what is queued from now on makes it stale again
        read = await self.outbox.queued(self.peer, size, after=after)
        batch = within_bytes(read)
        if len(read) == size or len(batch) < len(read):  # more may wait
            self._stale = True
        return batch

    async def _back_off(self, exc: Exception, size: int) -> None:
        cfg = self.outbox.config
        self.status.last_error = f"{timestamp()} {type(exc).__name__}: {exc}"
        # This node's store was busy, or it holds as much of partners' answers as it may at once:
        # not the partner's failure; but a budget kept full (partners colluding) does not have a
        # batch sent again every base delay for ever: past BUSY_RETRIES in a row, it backs off.
        self._busy = self._busy + 1 if isinstance(exc, AnswersFull) else 0
        if isinstance(exc, Unavailable) or (isinstance(exc, AnswersFull) and self._busy <= BUSY_RETRIES):
            delay = cfg.retry_base_seconds  # (jittered below, so that busy senders do not retry together)
        else:
            self.status.failures += 1
            delay = min(cfg.retry_max_seconds, cfg.retry_base_seconds * 2 ** min(self.status.failures, 30))
        delay *= random.uniform(0.5, 1.0)
        self.status.backoff_until = timestamp(utc_now() + dt.timedelta(seconds=delay))
        log.warning(
            "send failed; will retry",
            extra={
                "peer": self.peer,
                "error": f"{type(exc).__name__}: {exc}",
                "retry_in": round(delay, 3),
                "failures": self.status.failures,
                "batch": size,
            },
        )
        self._contact.clear()
        async with self.outbox.leases.kept(self.peer):  # no other worker retries it meanwhile
            await wait_event(self._contact, delay)
        self.status.backoff_until = None

    async def _send(self, batch: list[OutItem]) -> list[OutItem]:
        """Send a batch that `mark_sent` has audited; return the next one, read, if any.

        Two batches in flight at most, after a batch of PIPELINE_FROM or more (or a full one):
        this one goes out while the one before is still being stored at the peer (which stores a
        sender's transactions in the order they came, `Receiving.receive`), the next one is read
        meanwhile if anything may be queued after this one (the sender was woken since its read,
        or the read was full) and marked sent only when it goes (`run`), and each one's receipts
        are checked and stored here as they come. A batch is marked delivered only once its
        receipts are stored; one that fails stays queued and goes again (the peer answers what it
        holds with the receipts it gave). After a refusal, batches go one at a time.
        """
        flight = asyncio.create_task(self._deliver(batch))
        previous, self._flight = self._flight, flight
        # Read ahead only if something may be queued after this batch (woken since it was read),
        # and the batch was large: after a small one, what is queued while it travels goes next;
        # and not while many partners are being pushed to (`Outbox.many_pushes`).
        ready = (
            not self._single
            and self._stale
            and len(batch) >= min(PIPELINE_FROM, self.outbox.config.batch_size)
            and not self.outbox.many_pushes()
        )
        prepared = asyncio.create_task(self._next_batch(after=batch[-1].n)) if ready else None
        try:
            if previous is not None:
                await self._landed(previous)
            if prepared is None:
                await self._drain()
                return []
            return await prepared
        except asyncio.CancelledError:
            if previous is not None:
                previous.cancel()
            await _discard(prepared)
            raise
        except BaseException:
            await _discard(prepared)
            raise

    async def _deliver(self, batch: list[OutItem]) -> int:
        """One transaction to the peer, then its receipts checked and stored; how many were new.
        Counted in the outbox's pushes under way meanwhile (`Outbox.many_pushes`)."""
        self.outbox.push_started()
        try:
            return await self._push(batch)
        finally:
            self.outbox.push_ended()

    async def _push(self, batch: list[OutItem]) -> int:
        txn = transaction_id([i.key for i in batch])
        self.status.in_flight = len(batch)
        try:
            async with self.outbox.leases.kept(self.peer):  # however long the partner takes to answer
                with self.outbox.bodies.sending(txn, batch) as body:
                    answer = await self.outbox.transport.send(self.peer, FED_ENVELOPES, body)
        except PeerRefused as exc:
            if exc.status in RETRYABLE_REFUSALS:
                raise
            if len(batch) > 1:
                # Find the item it refuses by sending one at a time; the rest still go.
                self._single = True
                raise PeerError(f"{self.peer} refused a batch: {exc.detail}") from exc
            await self.outbox.reject_queued(self.peer, batch[0], exc.detail)
            return 0
        delivered = await self.outbox.accept_receipts(self.peer, batch, answer["receipts"], answer.get("batches", []))
        if len(batch) == 1:  # the item a refusal was looked for in went through: batches again
            self._single = False
        return delivered


async def _discard(task: asyncio.Task[list[OutItem]] | None) -> None:
    """Stop a read-ahead that is no longer wanted (what it read goes again later)."""
    await cancel_and_wait(task, quiet=True)


__all__ = ["Sender"]
