"""Roster gossip (docs/protocol.md, 6a.11): every federation request and answer names the roster
version its node holds; a node that sees a newer one pulls the versions it lacks from that peer
and checks them itself (`FederationRoster.import_chain`, source "peer:<id>"); a node that sees an
older one does nothing, since its own answers and requests name its version and the peer pulls.

A node listed only in a version its peers do not hold yet cannot pass their TLS pin check; its
first contact offers the versions that list it on a route without a client certificate, bounded in
size and rate (`take_offer`), and nothing else is taken from it until a peer holds them.

After every version it takes (by gossip, an offer, or `exchange roster import` into its database
beside it, noticed within `refresh_seconds`), the node installs it live (`install`, which is
NodeService.install) and announces it: one pull request, which names the version, to every
partner for a version imported here, and to `peers` partners chosen at random for one taken from
a peer (each of those tells `peers` more, and every request and answer names it too). At start
and every `announce_seconds`, `peers` random partners are asked: a node's idle gossip costs the
same in a federation of 200 as in one of 5.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from exchange.clock import cancel_and_wait, stop_requested, utc_now
from exchange.crypto import canonical_json
from exchange.errors import (
    ExchangeError,
    InvalidInput,
    PeerError,
    RateLimited,
    RequestTimeout,
    RosterBehind,
    RosterChainBroken,
)
from exchange.model import NodeId
from exchange.protocol.roster import Federation
from exchange.protocol.roster2_model import MAX_ROSTER_BYTES
from exchange.service.federation import FederationRoster, Imported
from exchange.service.rejections import client_key
from exchange.service.roster_forks import judge_below, stored_hashes
from exchange.service.transport import PeerTransport

log = logging.getLogger("exchange.roster")

ROSTER_HEADER = "Exchange-Roster-Version"
ROSTER_HASH_HEADER = "Exchange-Roster-Hash"  # the held version's hash (6a.2), beside its number
ROSTER_PATH = "/fed/v1/roster"
PAGE_VERSIONS = 32  # versions in one answer to a pull; a node further behind pulls again
PAGE_BYTES = 4 * MAX_ROSTER_BYTES  # and about as many bytes as one import takes, at least one version
OFFER_BYTES = MAX_ROSTER_BYTES  # an offer on the route without a client certificate
OFFER_VERSIONS = 4  # the newest versions a node offers a peer that does not know it yet
# How long an offer's body may take to arrive while it holds the one turn: a client that trickles
# it would otherwise hold every offer off for the server's body timeout (120 s), and again from
# each address it has. 16 MiB in 30 s is about 0.6 MiB/s.
OFFER_READ_SECONDS = 30.0


Install = Callable[[], Awaitable[None]]


def header_version(value: str | None) -> int | None:
    """The version a peer's `Exchange-Roster-Version` header names, or None if absent or malformed."""
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 12:
        return None
    return int(value)


def header_hash(value: str | None) -> str | None:
    """The hash a peer's `Exchange-Roster-Hash` header names (64 lowercase hex), or None."""
    if value is None or len(value) != 64 or not all(c in "0123456789abcdef" for c in value):
        return None
    return value


def offer_source(peer: NodeId | None, address: str | None) -> str:
    """Who offers roster versions, as their refusals are audited and their offers spaced: the
    authenticated peer, or else the client's address as every limit counts it (`client_key`: an
    IPv6 /64, not each of its addresses, which would let one site step around both)."""
    return f"peer:{peer}" if peer is not None else f"offer:{client_key(address)}"


class RosterGossip:
    """Spreads the roster versions this node holds, and takes the ones its peers hold."""

    def __init__(
        self,
        me: str,
        roster: FederationRoster,
        fed: Federation,
        *,
        pull_interval: float = 5.0,
        refresh_seconds: float = 5.0,
        announce_seconds: float = 600.0,
        offer_interval: float = 10.0,
        offer_read_seconds: float = OFFER_READ_SECONDS,
        peers: int = 4,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.me = me
        self.roster = roster
        self.fed = fed
        self.pull_interval = pull_interval  # between two pulls from one peer that failed
        self.refresh_seconds = refresh_seconds  # how often the database is read for a local import
        self.announce_seconds = announce_seconds  # how often every partner is asked anyway
        self.offer_interval = offer_interval  # between two offers from one source
        self.offer_read_seconds = offer_read_seconds  # for an offer's body to arrive, holding the turn
        self.peers = peers  # partners asked at start, on the timer, and told of a version from a peer
        self._clock = clock
        self._transport: PeerTransport | None = None
        self._install: Install | None = None
        self._tried: dict[str, float] = {}  # peer -> when a pull from it last failed
        self._offers: dict[str, float] = {}  # source -> when it last offered
        self._offering = asyncio.Lock()
        self._pulling: asyncio.Task[None] | None = None
        # peer -> the highest version it named while a pull from another was under way: asked in
        # turn once that pull ends, so that one partner that names a version it never serves, and
        # answers slowly, holds up the others' news for one request at most, not until the timer
        self._named: dict[str, int] = {}
        self._last_named: dict[str, int] = {}  # peer -> the version it named last (`check_source`)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._announced = 0  # the version last announced
        # (peer, version): a peer whose chain differs from this node's at that version, asked for
        # its copy (`_compare`) until an answer is judged (RosterEquivocation: recorded, audited)
        self._compared: set[tuple[str, int]] = set()
        self._unanswered: dict[str, float] = {}  # peer -> when it last did not answer a compare
        # the hashes of the versions stored here, read for the held version `_hashes_at`: a peer
        # that names a lower version with another hash is on another branch (`_compare`)
        self._hashes: dict[int, str] = {}
        self._hashes_at = -1
        self._comparing: asyncio.Task[None] | None = None

    def version(self) -> int:
        """The version this node holds (0 before its first), for the header of every request and answer."""
        held = self.roster.held
        return held.version if held is not None else 0

    def attach(self, transport: PeerTransport, install: Install) -> None:
        """Given by NodeService when it starts: how to reach peers, and how to install a version."""
        self._transport, self._install = transport, install

    def headers(self) -> dict[str, str]:
        """The headers of every federation request and answer: the version held, and its hash."""
        held = self.roster.held
        if held is None:
            return {ROSTER_HEADER: "0"}
        return {ROSTER_HEADER: str(held.version), ROSTER_HASH_HEADER: held.hash}

    # -- what peers say -------------------------------------------------------------------

    def seen(self, peer: str, version: int, digest: str | None = None) -> None:
        """`peer` named `version` (with its hash, `digest`) in a request or an answer: pull from it
        if it is newer than ours; ask it for its copy if ours of that version has another hash."""
        if peer != self.me and (peer in self._last_named or self.fed.listed(peer)):  # partners: one entry each
            self._last_named[peer] = version
        held = self.roster.held
        if digest is not None and held is not None and (version == held.version or 2 <= version < held.version):
            ours = held.hash if version == held.version else self._stored_hash(held.version, version)
            if ours is not None and ours != digest:
                self._diverged(peer, version)
        if version <= self.version() or self._transport is None or peer == self.me:
            return
        if self._pulling is not None and not self._pulling.done():
            if self.fed.listed(peer):  # partners only: one entry each
                self._named[peer] = max(version, self._named.get(peer, 0))
            return
        if self._clock() - self._tried.get(peer, -1e9) < self.pull_interval:
            return
        self._pulling = self._spawn(self._pulls(NodeId(peer)))

    async def _pulls(self, peer: NodeId) -> None:
        """Pull from `peer`, then from the peer that named the highest version meanwhile and was
        not refused of late, as long as one names a version above the one held."""
        while True:
            await self.pull(peer)
            now, held = self._clock(), self.version()
            named = {
                p: v
                for p, v in self._named.items()
                if v > held and p != peer and now - self._tried.get(p, -1e9) >= self.pull_interval
            }
            self._named.clear()
            if not named:
                return
            peer = NodeId(max(named, key=lambda p: named[p]))

    def check_peer(self, peer: str, version: int | None) -> None:
        """RosterBehind (503) if `peer`'s request names a newer version than the one this node runs
        on: its items may be signed or wrapped with keys only that version lists (a rotation,
        docs/protocol.md 6a.13), so none is judged before this node holds it. The version is
        pulled (`seen`), and the partner retries as after any 503."""
        running = self.fed.roster.version
        if version is None or self.roster.held is None or version <= running:
            return
        self.seen(peer, version)
        raise RosterBehind(f"{peer} runs on roster version {version}, this node on {running}: fetching it; retry")

    def check_source(self, peer: str) -> None:
        """`check_peer` for what `peer` serves (a catch-up page) by the version it named last, in
        a request or an answer: judged under an older version, an envelope signed with a key only
        the newer one lists is refused for good and passed over, at every member that is ahead
        (found by a read-only review). The page is asked again once this node holds it."""
        self.check_peer(peer, self._last_named.get(peer))

    async def pull(self, peer: NodeId) -> Imported | None:
        """Fetch the versions after ours from `peer`, and take them if they check (else audited).

        A pull that takes nothing (refused, or an empty or stale answer) is not made again before
        `pull_interval`: a peer whose header names a version it does not serve was otherwise
        pulled from at each exchange with it.
        """
        assert self._transport is not None
        try:
            answer = await self._transport.fetch(peer, f"{ROSTER_PATH}?after={self.version()}")
            versions = answer.get("versions") if isinstance(answer, dict) else None
            if not isinstance(versions, list):
                raise InvalidInput(f"{peer} answered a roster pull without a list of versions")
            imported = (
                await self.roster.import_chain([canonical_json(v) for v in versions], source=f"peer:{peer}")
                if versions
                else None
            )
        except (PeerError, ExchangeError) as exc:
            self._tried[peer] = self._clock()
            log.warning("no roster versions taken from %s: %s: %s", peer, type(exc).__name__, exc)
            if isinstance(exc, RosterChainBroken):  # its chain went another way at ours, or before
                self._diverged(peer, self.version())
            return None
        if imported is None or not imported.changed:
            self._tried[peer] = self._clock()
        else:
            self._tried.pop(peer, None)
        if imported is not None:
            await self.took(imported)
        return imported

    def _stored_hash(self, held: int, version: int) -> str | None:
        """The hash of the stored `version`, or None while they are read (once per held version)."""
        if self._hashes_at != held and self._transport is not None:
            self._hashes_at = held
            self._spawn(self._read_hashes())
        return self._hashes.get(version)

    async def _read_hashes(self) -> None:
        try:
            async with self.roster.store.read() as conn:
                self._hashes = await stored_hashes(conn)
        except Exception as exc:  # read again at the next naming
            self._hashes_at = -1
            log.warning("the stored roster hashes were not read: %s: %s", type(exc).__name__, exc)

    def _diverged(self, peer: str, version: int) -> None:
        """`peer`'s chain is not this node's at `version` (another hash, or a successor that does
        not follow it): ask it once for its copy of that version (`_compare`)."""
        if self._transport is None or peer == self.me or not self.fed.listed(peer):
            return
        if (peer, version) in self._compared or (self._comparing is not None and not self._comparing.done()):
            return  # one compare at a time: a peer that names another hash again is asked after it
        if self._clock() - self._unanswered.get(peer, -1e9) < self.pull_interval:
            return
        self._compared.add((peer, version))
        self._comparing = self._spawn(self._compare(NodeId(peer), version))

    async def _compare(self, peer: NodeId, version: int) -> None:
        """Fetch `peer`'s versions from `version` on and judge its copy of `version`. Of the version
        held: imported, so that the authority's signature on another version `version` is refused
        as RosterEquivocation (recorded and audited; anything else it sends is judged as any import
        is). Of one below it (the peer is behind on another branch): `judge_below`."""
        assert self._transport is not None
        try:
            answer = await self._transport.fetch(peer, f"{ROSTER_PATH}?after={version - 1}")
            versions = answer.get("versions") if isinstance(answer, dict) else None
            if not isinstance(versions, list) or not versions:
                raise InvalidInput(f"{peer} named another roster version {version} but sent none")
            if version < self.version():
                await self._judge_below(peer, versions, version)
                return
            await self.took(
                await self.roster.import_chain([canonical_json(v) for v in versions], source=f"peer:{peer}")
            )
        except PeerError as exc:  # not answered: asked again when it next names another hash
            self._unanswered[peer] = self._clock()
            self._compared.discard((peer, version))
            log.warning("roster version %d not compared with %s's: %s", version, peer, exc)
        except ExchangeError as exc:  # judged: an equivocation is recorded and audited by the import
            log.warning("roster version %d compared with %s's: %s: %s", version, peer, type(exc).__name__, exc)

    async def _judge_below(self, peer: NodeId, versions: list[Any], version: int) -> None:
        """`judge_below`, and the version before when the peer's does not follow this node's (its
        branch left this node's further down): one request per version, down to version 2."""
        assert self._transport is not None
        while True:
            try:
                await judge_below(self.roster, versions, version, f"peer:{peer}", utc_now())
                return
            except RosterChainBroken:
                version -= 1
                if version < 2 or (peer, version) in self._compared:
                    return
                self._compared.add((peer, version))
            try:
                answer = await self._transport.fetch(peer, f"{ROSTER_PATH}?after={version - 1}")
            except PeerError:
                self._compared.discard((peer, version))  # this step is asked again, as the first
                raise
            got = answer.get("versions") if isinstance(answer, dict) else None
            if not isinstance(got, list):
                raise InvalidInput(f"{peer} answered a roster pull without a list of versions")
            versions = got

    async def serve(self, after: int) -> bytes:
        """The answer to a pull: the version held and the signed versions after `after`, as stored."""
        blobs: list[bytes] = []
        size = 0
        for blob in (await self.roster.chain(after))[:PAGE_VERSIONS]:
            if blobs and size + len(blob) > PAGE_BYTES:
                break
            blobs.append(blob)
            size += len(blob)
        head = canonical_json({"version": self.version()})[:-1]
        return head + b',"versions":[' + b",".join(blobs) + b"]}"

    async def take_offer(self, offer: bytes | Callable[[], Awaitable[bytes]], source: str) -> Imported:
        """Versions offered on the route without a client certificate: one offer at a time, one per
        source and `offer_interval`; checked as any import is (a refusal is audited within bounds).

        `offer` is the body, or how to read it: the route's body is read once the offer is let in,
        and the offer holds its turn while it is read. So a client refused 429 has had none of its
        body read, and the node holds one offer's body at a time (OFFER_BYTES), not one for each
        client that sends one (each was read whole, then refused). Nothing is checked before the
        body is parsed, so an offer of more than OFFER_VERSIONS versions (more than a node sends)
        is refused once its JSON is read, before the schema reads it, and one of a MiB or more is
        parsed in a thread (`FederationRoster.import_chain`), not on the event loop.
        """
        now = self._clock()
        if now - self._offers.get(source, -1e9) < self.offer_interval or self._offering.locked():
            raise RateLimited("one roster offer at a time, and one per source every few seconds", retry_after=10)
        self._offers[source] = now
        if len(self._offers) > 1000:
            self._offers = {s: t for s, t in self._offers.items() if now - t < self.offer_interval}
        async with self._offering:  # taken at once: nothing was awaited since it was seen free
            try:
                async with asyncio.timeout(self.offer_read_seconds):
                    raw = offer if isinstance(offer, bytes) else await offer()
            except TimeoutError as exc:
                raise RequestTimeout(
                    f"the roster offer did not arrive within {self.offer_read_seconds:g} s",
                    audited="offer read timed out",
                ) from exc
            imported = await self.roster.import_chain(raw, source=source[:64], max_versions=OFFER_VERSIONS)
        await self.took(imported)
        return imported

    # -- what this node does ----------------------------------------------------------------

    async def took(self, imported: Imported) -> None:
        """A version was taken from a peer: install it live, then tell `peers` partners (in the
        background)."""
        if imported.changed:
            await self.installed(everyone=False)
        elif self._behind():  # imported beside the node a moment before, and found here first
            await self.installed()

    def _behind(self) -> bool:
        """Whether the version held is not the one the node runs on. A pull or an offer of a version
        imported beside the node (`exchange roster import`) since its last `reload` finds it stored,
        takes it as held and adds nothing: neither `took` nor the next `reload` sees a change, and
        without this the node went on running on the version before, its new partners without
        senders, for good."""
        held = self.roster.held
        return held is not None and held.version != self.fed.roster.version

    async def installed(self, *, everyone: bool = True) -> None:
        if self._install is not None:
            await self._install()
        if self._transport is not None and self._announced != self.version():
            self._announced = self.version()
            self._spawn(self.announce(everyone=everyone))

    async def announce(self, *, everyone: bool = False) -> None:
        """Ask partners (every one, or `peers` of them at random) for the versions after ours: the
        request names our version, so one that is behind pulls from us; one that is ahead answers
        with its versions. A partner that does not know this node yet (its TLS or pin check refuses
        us) is offered our newest versions."""
        peers = [n.id for n in self.fed.roster.nodes if n.id != self.me]
        if not everyone and len(peers) > self.peers:
            peers = random.sample(peers, self.peers)
        await asyncio.gather(*(self._announce_to(NodeId(p)) for p in peers))

    async def _announce_to(self, peer: NodeId) -> None:
        assert self._transport is not None
        try:
            answer = await self._transport.fetch(peer, f"{ROSTER_PATH}?after={self.version()}")
        except PeerError:
            await self._offer_to(peer)
            return
        versions = answer.get("versions") if isinstance(answer, dict) else None
        if isinstance(versions, list) and versions:
            with contextlib.suppress(ExchangeError):
                await self.took(
                    await self.roster.import_chain([canonical_json(v) for v in versions], source=f"peer:{peer}")
                )

    async def _offer_to(self, peer: NodeId) -> None:
        offer = getattr(self._transport, "offer", None)  # HttpTransport's; a test's fake may have none
        if offer is None:
            return
        blobs = (await self.roster.chain(max(0, self.version() - OFFER_VERSIONS)))[-OFFER_VERSIONS:]
        while len(blobs) > 1 and sum(len(b) for b in blobs) + len(blobs) + 1 > OFFER_BYTES:
            blobs = blobs[1:]
        if not blobs:
            return
        try:
            await offer(peer, b"[" + b",".join(blobs) + b"]")
        except (PeerError, ExchangeError) as exc:
            log.info("roster offer to %s not taken: %s", peer, exc)

    async def run(self) -> None:
        """The loop: a version imported into the database beside the node is installed within
        `refresh_seconds` and announced to every partner; `peers` partners are asked at start and
        every `announce_seconds`; an expiry is warned of."""
        last_announce = self._clock()
        self._announced = self.version()
        if self._announced:  # a node that holds a version says so at start: it may be new, or behind
            try:
                await self.announce()
            except asyncio.CancelledError:
                raise
            except Exception:  # a database that failed over at start, say: the loop goes on all the same
                if not stop_requested():
                    log.exception("the roster announcement at start failed; the rounds go on")
        while True:
            await asyncio.sleep(self.refresh_seconds)
            try:
                if await self.roster.reload() or self._behind():
                    await self.installed()
                if self._clock() - last_announce >= self.announce_seconds:
                    last_announce = self._clock()
                    await self.announce()
                    status = self.roster.status()
                    if status is not None and status.warning:
                        log.warning("%s: %s (expires %s)", self.me, status.warning, status.expires)
            except asyncio.CancelledError:
                raise
            except Exception:
                if not stop_requested():  # else no failure: the node stops (below)
                    log.exception("the roster gossip round failed; trying again")
            if stop_requested():  # cancelled in a wait that ended otherwise (exchange.clock)
                raise asyncio.CancelledError

    async def close(self) -> None:
        """Cancel what it began; from now on what peers say begins nothing (a sender's answer can
        still come in while the node stops, after this)."""
        self._transport = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            await cancel_and_wait(task, quiet=True)

    def _spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


__all__ = [
    "OFFER_BYTES",
    "ROSTER_HASH_HEADER",
    "ROSTER_HEADER",
    "ROSTER_PATH",
    "RosterGossip",
    "header_hash",
    "header_version",
]
