"""What a worker process learns from the others over one PostgreSQL database (LISTEN/NOTIFY).

The triggers of migration 0007 notify, at commit, every item queued for a partner, every channel
event and every audit entry (exchange.store.workers). Each worker follows them here:

- items queued for a partner wake this worker's sender to it, which sends them if this worker
  holds the partner's lease (exchange.service.leases);
- a partner that talked to another worker ends this worker's back-off from it (`Leases.seen`);
- a channel event another worker stored is taken into this worker's channel states;
- an epoch record, epoch key or history grant another worker stored is taken into this worker's
  epochs (exchange.service.epoch_store; the writer notifies, not a trigger);
- audit entries move this worker's end of the log, so its keeper takes them in.

No broker: the database delivers them. A notification lost with its connection is made good when
the connection is opened again (every channel re-read, every sender woken), and the pollers of
the outbox and the audit keeper (`POLL_SECONDS`) catch anything else. The roster version held
follows the table through the gossip loop's reload. On SQLite there is one process: nothing here
runs.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from exchange.service.channels import ChannelBook
from exchange.service.epochs import EpochBook
from exchange.service.outbox import Outbox
from exchange.store import Store
from exchange.store.workers import AUDIT, CHANNELS, EPOCHS, OUTBOX, PEERS, Changes

log = logging.getLogger("exchange.workers")


class WorkerSync:
    """This worker's caches, kept up with what the other workers commit."""

    def __init__(self, store: Store, outbox: Outbox, channels: ChannelBook, epochs: EpochBook | None = None) -> None:
        self.store = store
        self.outbox = outbox
        self.channels = channels
        self.epochs = epochs
        self.changes = Changes(store.engine)
        self.changes.on(OUTBOX, lambda dest: outbox.wake([dest]))
        self.changes.on(PEERS, lambda peer: outbox.peer_seen(peer, tell=False))
        self.changes.on(CHANNELS, lambda channel: self._once(f"channel:{channel}", lambda: channels.refresh(channel)))
        self.changes.on(AUDIT, lambda _: self._once("audit", store.refresh_audit_size))
        if epochs is not None:
            self.changes.on(EPOCHS, lambda channel: self._once(f"epochs:{channel}", lambda: epochs.refresh(channel)))
        self.changes.on_reconnect(self._everything)
        self._running: dict[str, asyncio.Task[object]] = {}
        self._again: set[str] = set()

    def start(self) -> None:
        if self.store.shared:
            self.changes.start()

    async def close(self) -> None:
        await self.changes.close()
        for task in list(self._running.values()):
            task.cancel()
        self._running.clear()

    def _everything(self) -> None:
        self.outbox.wake(list(self.outbox.senders))
        self._once("channels", lambda: self.channels.refresh())
        self._once("audit", self.store.refresh_audit_size)
        if self.epochs is not None:
            self._once("epochs", self.epochs.refresh)

    def _once(self, key: str, work: Callable[[], Awaitable[object]]) -> None:
        """Run `work`; if it is running already, once more after it (a burst of notifications
        is one re-read, and none is missed)."""
        if key in self._running:
            self._again.add(key)
            return

        async def run() -> object:
            try:
                while True:
                    self._again.discard(key)
                    try:
                        await work()
                    except Exception:  # the next notification, or the pollers, try again
                        log.exception("following another worker's commit (%s) failed", key)
                    if key not in self._again:
                        return None
            finally:
                # In the same step as the last look at `_again`: a done-callback ran a step later,
                # and a notification handed over in between was put in `_again` for a loop that
                # had ended, and never followed.
                if self._running.get(key) is task:
                    del self._running[key]

        task = self._running[key] = asyncio.create_task(run(), name=f"worker-sync-{key}")


__all__ = ["WorkerSync"]
