"""One node's application layer, assembled from its parts: the object every adapter is given.

Built once by the composition root with its store, verified roster, keys and `PeerTransport`;
nothing is patched in afterwards. Each part owns one job; the methods here only delegate, so
that adapters name one object.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Any

from exchange.clock import cancel_and_wait
from exchange.config import NodeConfig
from exchange.crypto import NodeKeys
from exchange.errors import ExchangeError, HeldRosterExpired
from exchange.keystore import TlsIdentity
from exchange.model import Bulletin, ChannelEvent, NodeId, Receipt
from exchange.protocol.roster import Federation
from exchange.service.access import Access
from exchange.service.audit.service import AuditService
from exchange.service.audit.tlog_push import TlogClient
from exchange.service.batch import BatchPosting
from exchange.service.catchup import CatchUp
from exchange.service.channels import ChannelBook
from exchange.service.cryptopool import EnvelopeCrypto
from exchange.service.epoch_keyfile import epoch_hybrid_key
from exchange.service.epoch_prefetch import EpochPrefetch
from exchange.service.epochs import EpochBook
from exchange.service.federation import FederationRoster
from exchange.service.follow import Follow
from exchange.service.gossip import ROSTER_PATH, RosterGossip
from exchange.service.ids import BulletinIds
from exchange.service.inbox import Inbox
from exchange.service.listing import Listing
from exchange.service.metrics import NodeMetrics
from exchange.service.outbox import Outbox, OutItem, PeerStatus
from exchange.service.ownkeys import OwnKeys
from exchange.service.posting import Posting
from exchange.service.receiving import Receiving
from exchange.service.rejections import Refusals, RefusalSettings
from exchange.service.retention import Retention
from exchange.service.revocation import leave_departed
from exchange.service.rfis import RequestsForInformation
from exchange.service.senders import SenderLoops
from exchange.service.taxii import Taxii
from exchange.service.transport import PeerTransport, WhileRosterHolds
from exchange.service.users import User, Users
from exchange.service.views import BulletinSummary, BulletinView, Posted
from exchange.service.webhooks import Webhooks, WebhookSender
from exchange.service.worker_sync import WorkerSync
from exchange.store import Store

log = logging.getLogger("exchange.node")


class NodeService:
    """One node's behaviour over its store, keys and verified roster."""

    def __init__(
        self,
        config: NodeConfig,
        store: Store,
        fed: Federation,
        keys: NodeKeys,
        transport: PeerTransport,
        signed_roster: Any,
        *,
        roster: FederationRoster | None = None,
        webhook_sender: WebhookSender | None = None,
        gossip: RosterGossip | None = None,
        tlog_client: TlogClient | None = None,
        tls: TlsIdentity | None = None,
    ) -> None:
        self.config = config
        self.me = NodeId(config.id)
        self.store = store
        self.fed = fed
        self.keys = keys
        self.transport = transport  # the adapter's; the parts below get it gated on the roster's expiry
        transport = WhileRosterHolds(transport, lambda: self.check_roster(), ROSTER_PATH)
        self.outbox = Outbox(config, store, fed, transport)
        self.sending = SenderLoops(self.outbox)  # its senders' loops, following the roster
        self.channels = ChannelBook(
            self.me, fed, keys.signing, store, transport, self.outbox.wake, held=lambda: self.roster.held
        )  # `held`: the roster v2 version, read at each use (a handover needs it, docs/protocol.md 7.5)
        self.access = Access(self.me, self.channels)
        self.crypto = EnvelopeCrypto(self.me, keys, fed, config.crypto_workers)
        self.own_keys = OwnKeys(self.me, config.keys_dir, keys, tls)  # rotations of this node's keys, live
        self.users = Users(store)
        self.epochs = EpochBook(
            self.me, store, fed, keys, self.channels, transport, epoch_hybrid_key(config), announce=config.envelope_v2
        )
        # epochs made (owner) and fetched (readers) once a channel's state settles, before a post needs them
        self.epoch_prefetch = EpochPrefetch(self.me, store, self.channels, self.epochs, config.epoch_prefetch_seconds)
        self.inbox = Inbox(self.me, store, fed, keys, self.access, self.outbox, self.epochs)
        self.ids, self.listing = BulletinIds(store, self.access), Listing(store, self.access)  # CLI look-ups
        self.posting = Posting(
            self.me, store, fed, keys, self.access, self.inbox, self.outbox, self.crypto, self.epochs
        )
        self.receiving = Receiving(
            self.me, store, fed, keys, self.channels, self.outbox, transport, self.crypto, self.epochs
        )
        self.catchup = CatchUp(
            self.me,
            store,
            self.channels,
            self.receiving,
            transport,
            self.outbox,
            config.catchup_interval_seconds,
            config.catchup_peers,
        )
        self.audit = AuditService(
            self.me,
            store,
            fed,
            keys.signing,
            transport,
            self.partners,
            signed_roster,
            tlog_logs=config.tlog_logs,
            tlog_witnesses=config.tlog_witnesses,
            tlog_client=tlog_client,
            witnesses_per_log=config.audit_witnesses,
            epochs=self.epochs,
        )
        self.refusals = Refusals(store, RefusalSettings.from_config(config))
        # The roster v2 chain: `fed` is its held version's v1 view once one is imported (exchange.app)
        self.roster = roster or FederationRoster(store)
        # roster versions to and from peers
        self.gossip = gossip or RosterGossip(config.id, self.roster, fed, peers=config.gossip_peers)
        self.catchup.check_source = self.gossip.check_source
        self._installs: list[Callable[[Federation], None]] = []  # adapters that follow the roster live
        self.retention = Retention(store, dt.timedelta(days=config.outbox_retention_days))
        self.taxii = Taxii(self.me, store, fed, self.access)  # TAXII reads and STIX exports
        self.follow = Follow(store, self.listing)  # long polls and the console's live inbox
        self.rfis = RequestsForInformation(store, self.access)
        self.metrics = NodeMetrics(self.me, store, fed, self.outbox, self.audit, self.roster)  # GET /metrics
        self.batch = BatchPosting(self.posting)  # many posts in one request, each on its own
        self.webhooks = Webhooks(self.me, store, self.access, webhook_sender)  # metadata to administrations' URLs
        # Other workers' commits (PostgreSQL): queued items, channel events, audit entries, epochs.
        self.worker_sync = WorkerSync(store, self.outbox, self.channels, self.epochs)
        self._tasks: list[asyncio.Task[None]] = []

    def partners(self) -> list[str]:
        """The nodes this node shares a channel with: they witness our log, we witness theirs."""
        roster = {n.id for n in self.fed.roster.nodes} - {self.me}
        return sorted({n for state in self.channels.all() for n in state.members} & roster)

    # -- life cycle -------------------------------------------------------------------------

    async def load(self, provisioned: Sequence[Sequence[ChannelEvent]] = ()) -> None:
        """Load the channel logs, and import those `federation init` provisioned for this node; not
        on an audit log shorter than this node signed (AuditTampered): importing writes entries."""
        await self.audit.keeper.refuse_if_shorter()
        await self.roster.load()
        await self.channels.load()
        await self.epochs.load()
        await self.channels.import_provisioned(provisioned)

    async def start(self) -> None:
        """Start the background loops: the audit round, a sender per partner, and catch-up.

        The audit log is checked first, before anything is written or sent: a log that lost or
        changed what this node signed raises AuditTampered, and the node does not start.
        """
        await self.audit.start(self.config.audit_checkpoint_seconds)
        self.webhooks.start()
        await self.crypto.start()
        await self.sweep_departed()
        self.sending.start()  # a sender per partner, draining whatever was queued before a restart
        self._tasks.append(asyncio.create_task(self.catchup.run(), name="catch-up"))
        self.gossip.attach(self.transport, self.install)
        self._tasks.append(asyncio.create_task(self.gossip.run(), name="roster-gossip"))
        if self.epoch_prefetch.enabled:  # envelope v2 on, and epochs ahead of posts not switched off
            self._tasks.append(asyncio.create_task(self.epoch_prefetch.run(), name="epoch-prefetch"))
        self.refusals.start()
        self.retention.start()
        self.worker_sync.start()

    async def stop(self) -> None:
        """Stop the loops, then sign a checkpoint of everything this run wrote (before the store
        closes); a loop that failed is logged, and the others are stopped all the same."""
        self.follow.close()  # long polls and console streams end first: they would outlive the store
        await self.worker_sync.close()
        await self.webhooks.close()
        await self.retention.close()
        await self.refusals.close()  # the last counts of refused requests, before the checkpoint below
        try:
            await self.audit.close()
        except Exception:
            log.exception("the audit round did not stop cleanly")
        await self.gossip.close()
        self._tasks += self.sending.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await cancel_and_wait(task)
            except Exception:
                log.exception("background task %s had failed", task.get_name())
        self._tasks = []
        await self.outbox.leases.release()  # other workers take its partners (exchange.service.leases)
        try:
            await self.audit.sign_at_stop()
        except Exception:
            log.exception("no checkpoint was signed at shutdown: the entries since the last one are unsigned")
        await self.crypto.close()

    # -- the roster, live ----------------------------------------------------------------------

    def on_install(self, install: Callable[[Federation], None]) -> None:
        """Have an adapter follow each roster version installed (the server's TLS, the transport)."""
        self._installs.append(install)

    async def install(self) -> None:
        """Run on the roster version held now, at once (docs/operations.md, "What changes live"):
        the one `Federation` every part reads through takes its v1 view in one assignment; then the
        parts that keep something derived from it follow: a sender for each new partner and none
        for a partner no longer listed, the encryption keys cached for posting, the crypto worker
        processes, and the adapters (`on_install`)."""
        view = self.roster.view()
        if view is None or view.roster == self.fed.roster:
            return
        before = self.fed.roster.version
        self.fed.install(view)
        if not view.listed(self.me):
            await self._depart(before)
            return
        if self.own_keys.follow(self.fed):  # this node's own rotation: sign and open with the new keys
            self.channels.key = self.keys.signing
            self.audit.use_key(self.keys.signing)
        self.posting.forget_keys()  # wrapped for the current encryption keys from now on
        self.audit.install()  # its witnesses are the new version's
        self._restart_crypto_workers()
        self._follow_partners()
        for install in self._installs:
            install(self.fed)
        log.info("%s runs on roster version %d (was %d), live", self.me, view.roster.version, before)
        await self.sweep_departed()

    async def _depart(self, before: int) -> None:
        """The version just installed suspends or revokes this node: it has no current keys of its
        own, and its partners refuse it. What applies still follows (no senders, its queues kept;
        the adapters drop the others that left; the departed leave its channels), and its federation
        work stops. It cannot start on this version: docs/operations.md, "When this node is the one
        suspended"."""
        held = self.roster.held
        status = held.node(self.me).status if held is not None else "not listed"
        self.sending.follow(set())
        for install in self._installs:
            install(self.fed)
        await self.sweep_departed()
        log.error(
            "%s is %s in roster version %d (was %d): it sends nothing and its partners refuse it; stop it, "
            "and start it once it holds a version that lists it active (exchange roster import)",
            self.me,
            status,
            self.fed.roster.version,
            before,
        )

    async def sweep_departed(self) -> None:
        """The held version's revoked and suspended nodes leave this node (exchange.service.revocation), at each
        install and each start, so that a restart in between loses none of it."""
        held = self.roster.held
        if held is not None:
            await leave_departed(self.me, held, self.channels, self.store)

    def _restart_crypto_workers(self) -> None:
        """New jobs go to worker processes started with the new roster; those in flight finish."""
        self.crypto.restart()

    def _follow_partners(self) -> None:
        self.sending.follow({n.id for n in self.fed.roster.nodes} - {self.me})

    def check_roster(self) -> None:
        """HeldRosterExpired while the held roster version is past its `expires`: no posts, and no
        federation traffic but roster versions, until a fresh version is imported."""
        if self.roster.expired():
            status = self.roster.status()
            expires = status.expires if status is not None else "?"
            raise HeldRosterExpired(
                f"{self.me}'s roster expired at {expires}: it takes no posts and no federation traffic "
                "until a fresh roster version is imported (exchange roster import)"
            )

    # -- delegation, so that adapters name one object ---------------------------------------

    async def post(
        self, user: User, channel: str, bulletin: Bulletin, *, seen: bool = False, idempotency_key: str | None = None
    ) -> Posted:
        self.check_roster()
        return await self.posting.post(user, channel, bulletin, seen=seen, idempotency_key=idempotency_key)

    async def post_many(
        self, user: User, channel: str, items: Sequence[Bulletin | ExchangeError], *, idempotency_key: str | None
    ) -> list[Posted | ExchangeError]:
        self.check_roster()
        return await self.batch.post_many(user, channel, items, idempotency_key=idempotency_key)

    async def forward(self, user: User, bid: str, channel: str, *, idempotency_key: str | None = None) -> Posted:
        self.check_roster()
        return await self.posting.forward(user, bid, channel, idempotency_key=idempotency_key)

    async def list_bulletins(
        self, user: User, channel: str | None = None, after: int = 0, limit: int = 50
    ) -> list[BulletinSummary]:
        return await self.inbox.list_bulletins(user, channel, after, limit)

    async def read(self, user: User, bid: str, *, attachment: int | None = None) -> BulletinView:
        return await self.inbox.read(user, bid, attachment=attachment)

    async def receive(
        self, peer: NodeId, raw_events: Sequence[Any], raw_envelopes: Sequence[Any], raw_receipts: Sequence[Any] = ()
    ) -> list[Receipt]:
        return await self.receiving.receive(peer, raw_events, raw_envelopes, raw_receipts)

    async def served_envelopes(self, peer: str, channel: str, **page: Any) -> bytes:
        return await self.catchup.served_envelopes(peer, channel, **page)

    async def cursor(self, peer: str, channel: str) -> int:
        return await self.catchup.cursor(peer, channel)

    async def queued_counts(self) -> dict[str, int]:
        return await self.outbox.queued_counts()

    async def peer_statuses(self) -> list[PeerStatus]:
        """Each partner's delivery status, with its current queue length."""
        return self.outbox.statuses(await self.outbox.queued_counts())

    async def pending(self, dest: str, limit: int) -> list[OutItem]:
        return await self.outbox.pending(dest, limit)

    async def audit_rejection(
        self,
        *,
        method: str,
        path: str,
        status: int,
        reason: str | None,
        peer: str | None,
        user: str | None,
        address: str | None = None,
    ) -> None:
        """Audit a refused request (4xx), within the bounds of `exchange.service.rejections`: its own
        entry for an accountable caller or within the interval's budget, else a count per address."""
        await self.refusals.record(
            method=method, path=path, status=status, reason=reason, peer=peer, user=user, address=address
        )


__all__ = ["NodeService"]
