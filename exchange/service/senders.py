"""The outbox's senders as running loops: one per partner, following the roster live (docs/
operations.md, "What changes live"). NodeService starts and stops them; a roster install calls
`follow`, so that the node's wiring does not reach into the outbox's senders itself."""

from __future__ import annotations

import asyncio

from exchange.model import NodeId
from exchange.service.outbox import Outbox
from exchange.service.sender import Sender


class SenderLoops:
    """Runs `outbox.senders`, and keeps them to the partners of the roster version held."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self._running: dict[str, asyncio.Task[None]] | None = None  # once started
        self.follow({n.id for n in outbox.fed.roster.nodes} - {outbox.me})

    def start(self) -> None:
        """Run a sender per partner, each woken to drain what was queued before a restart."""
        self._running = {}
        for peer, sender in self.outbox.senders.items():
            self._run(peer, sender)

    def follow(self, partners: set[str]) -> None:
        """The roster changed: a sender for each new partner (running if the others are), and none
        for a partner no longer listed (its queued items stay queued, sent if it is listed again)."""
        senders = self.outbox.senders
        for peer in set(senders) - partners:
            del senders[peer]
            task = self._running.pop(peer, None) if self._running is not None else None
            if task is not None:
                task.cancel()
        for peer in sorted(partners - set(senders)):
            sender = senders[peer] = Sender(self.outbox, NodeId(peer))
            if self._running is not None:
                self._run(peer, sender)

    def stop(self) -> list[asyncio.Task[None]]:
        """The loops, and the outbox's reads and writes they gathered, for the caller to cancel and
        await with its others; none is started after."""
        running, self._running = self._running or {}, None
        return list(running.values()) + self.outbox.tasks()

    def _run(self, peer: str, sender: Sender) -> None:
        assert self._running is not None
        self._running[peer] = asyncio.create_task(sender.run(), name=f"sender-{peer}")
        sender.wake()
