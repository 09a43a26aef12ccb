"""Roster gossip in the application layer (exchange.service.gossip), with a fake transport: what a
pull answers, a pull that takes a good chain and installs it once, a forged or equivocating chain
from a peer that changes nothing and is audited, the bounds on pulls and offers; and the one
`Federation` holder that a node's parts read through.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import sqlalchemy as sa

from exchange import errors
from exchange.crypto import canonical_json
from exchange.model import NodeId
from exchange.protocol.roster2_model import parse_timestamp
from exchange.protocol.rosterchain import TrustedRoster, parse_roster_v2, roster_hash
from exchange.protocol.rostermigration import propose
from exchange.protocol.rosterview import federation_view
from exchange.service import federation
from exchange.service.gossip import OFFER_VERSIONS, RosterGossip, header_hash, header_version, offer_source
from exchange.store import Store
from exchange.store.tables import roster_forks
from tests.conftest import eventually
from tests.protocol.test_roster_chain import CHAIN
from tests.service.test_federation_roster import as_file, audited, equivocating, holding, stored, under_threshold
from tests.vectors import make_roster_vectors as mrv
from tests.vectors.make_roster_vectors import alter, signed


class Peer:
    """A fake transport: answers every pull with `versions`, and records what was asked."""

    def __init__(self, versions: list[Any]) -> None:
        self.versions = versions
        self.asked: list[tuple[str, str]] = []

    async def fetch(self, node: NodeId, path: str) -> Any:
        self.asked.append((node, path))
        return {"version": 9, "versions": self.versions}

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        raise AssertionError("gossip only fetches")


def docs(*versions: int) -> list[Any]:
    return [CHAIN[v].model_dump(mode="json") for v in versions]


def test_the_header_is_a_small_number_or_ignored() -> None:
    assert header_version("7") == 7 and header_version("0") == 0
    for bad in (None, "", "-1", "7.0", " 7", "٣", "1" * 13, "0x7"):
        assert header_version(bad) is None, bad


async def test_a_pull_is_answered_with_the_versions_after_the_one_named(store: Store) -> None:
    roster = await holding(store, 1, 2, 3)
    gossip = RosterGossip("nl-customs", roster, federation_view(roster.held))  # type: ignore[arg-type]
    page = json.loads(await gossip.serve(1))
    assert page["version"] == 3 and page["versions"] == docs(2, 3)
    assert json.loads(await gossip.serve(3)) == {"version": 3, "versions": []}


async def test_a_newer_chain_from_a_peer_is_checked_taken_and_installed_once(store: Store) -> None:
    roster = await holding(store, 1)
    fed = federation_view(roster.held)  # type: ignore[arg-type]
    gossip = RosterGossip("nl-customs", roster, fed)
    installs: list[int] = []

    async def install() -> None:
        installs.append(roster.held.version)  # type: ignore[union-attr]

    peer = Peer(docs(2, 3))
    gossip.attach(peer, install)
    imported = await gossip.pull(NodeId("ke-customs"))
    assert imported is not None and (imported.before, imported.version) == (1, 3)
    assert peer.asked == [("ke-customs", "/fed/v1/roster?after=1")]
    assert installs == [3] and gossip.version() == 3
    entry = (await audited(store))[-1]
    assert (entry["event"], entry["version"], entry["source"]) == ("roster.installed", 3, "peer:ke-customs")
    await gossip.close()


@pytest.mark.parametrize(("held", "offered"), [((1,), under_threshold), ((1, 2), equivocating)])
async def test_a_forged_chain_from_a_peer_changes_nothing_and_is_audited(
    store: Store, held: tuple[int, ...], offered: Any
) -> None:
    roster = await holding(store, *held)
    before = await stored(store)
    gossip = RosterGossip("nl-customs", roster, federation_view(roster.held), clock=lambda: 100.0)  # type: ignore[arg-type]
    installs: list[int] = []

    async def install() -> None:
        installs.append(1)

    peer = Peer([json.loads(offered())])
    gossip.attach(peer, install)
    assert await gossip.pull(NodeId("ke-customs")) is None
    assert await stored(store) == before and roster.held.version == held[-1] and not installs  # type: ignore[union-attr]
    entry = (await audited(store))[-1]
    assert (entry["event"], entry["source"]) == ("roster.refused", "peer:ke-customs")
    # A peer whose chain failed is not pulled from again at once, whatever version it names.
    gossip.seen("ke-customs", 5)
    assert len(peer.asked) == 1
    await gossip.close()


async def test_offers_come_one_per_source_and_interval(store: Store) -> None:
    roster = await holding(store, 1)
    now = [100.0]
    gossip = RosterGossip("nl-customs", roster, federation_view(roster.held), clock=lambda: now[0])  # type: ignore[arg-type]
    chain = json.dumps(docs(2)).encode()
    assert (await gossip.take_offer(chain, "offer:192.0.2.7")).version == 2
    with pytest.raises(errors.RateLimited):
        await gossip.take_offer(chain, "offer:192.0.2.7")
    with pytest.raises(errors.RosterRollback):  # another source, at once: checked, and refused
        await gossip.take_offer(json.dumps(docs(1)).encode(), "offer:192.0.2.8")
    now[0] += gossip.offer_interval
    assert (await gossip.take_offer(chain, "offer:192.0.2.7")).added == 0
    assert roster.held.version == 2  # type: ignore[union-attr]


async def test_an_offer_whose_body_trickles_gives_up_its_turn(store: Store) -> None:
    """The offer's body is read while it holds the one turn: a client that trickled it held every
    other offer off (429) for the server's body timeout, 120 s, and again from its next address.
    Now it has `offer_read_seconds` (408, nothing taken), and the next offer is let in at once."""
    roster = await holding(store, 1)
    gossip = RosterGossip("nl-customs", roster, federation_view(roster.held), offer_read_seconds=0.2)  # type: ignore[arg-type]
    started = asyncio.Event()

    async def trickle() -> bytes:
        started.set()
        await asyncio.sleep(30)
        return json.dumps(docs(2)).encode()

    slow = asyncio.create_task(gossip.take_offer(trickle, "offer:192.0.2.7"))
    await started.wait()
    with pytest.raises(errors.RateLimited):  # one offer at a time
        await gossip.take_offer(json.dumps(docs(2)).encode(), "offer:192.0.2.8")
    with pytest.raises(errors.RequestTimeout):
        await asyncio.wait_for(slow, 5)
    assert roster.held.version == 1  # type: ignore[union-attr]
    assert (await gossip.take_offer(json.dumps(docs(2)).encode(), "offer:192.0.2.9")).version == 2
    await gossip.close()


async def test_an_offer_from_an_ipv6_site_is_one_source_whatever_its_low_64_bits(store: Store) -> None:
    """An offer's source was its full address, while every other limit counts an IPv6 /64: one
    site, changing its low 64 bits, made an offer every time (not one per 10 s) and had each of
    its refusals audited as a new source (about 1,200 entries a minute)."""
    roster = await holding(store, 1)
    now = [100.0]
    gossip = RosterGossip("nl-customs", roster, federation_view(roster.held), clock=lambda: now[0])  # type: ignore[arg-type]
    assert offer_source(None, "2001:db8:0:7::1") == offer_source(None, "2001:db8:0:7::2") == "offer:2001:db8:0:7::/64"
    assert offer_source(None, "::ffff:192.0.2.7") == offer_source(None, "192.0.2.7") == "offer:192.0.2.7"
    assert offer_source(NodeId("ke-customs"), "2001:db8:0:7::1") == "peer:ke-customs"
    entries = len(await audited(store))
    with pytest.raises(errors.RosterThreshold):
        await gossip.take_offer(under_threshold(), offer_source(None, "2001:db8:0:7::1"))
    for low in range(2, 50):
        with pytest.raises(errors.RateLimited):
            await gossip.take_offer(under_threshold(), offer_source(None, f"2001:db8:0:7::{low:x}"))
    refused = (await audited(store))[entries:]
    assert [e["source"] for e in refused] == ["offer:2001:db8:0:7::/64"]
    now[0] += gossip.offer_interval
    with pytest.raises(errors.RosterThreshold):
        await gossip.take_offer(under_threshold(), offer_source(None, "2001:db8:0:7::99"))
    assert [version for version, _, _ in await stored(store)] == [1]  # nothing taken


def test_the_node_federation_is_one_holder_that_takes_a_new_version_whole() -> None:
    fed = federation_view(TrustedRoster.restore(CHAIN[1]))
    held_by_a_part = fed  # what every part of a node keeps
    fed.install(federation_view(TrustedRoster.restore(CHAIN[1]).accept(CHAIN[2])))
    assert held_by_a_part.roster.version == 2
    assert [n.id for n in held_by_a_part.roster.nodes] == held_by_a_part.node_ids
    for node in held_by_a_part.roster.nodes:
        assert held_by_a_part.node(node.id) is node
        assert held_by_a_part.node_by_pin(node.tls_pin).id == node.id


async def test_idle_gossip_asks_a_few_partners_and_a_version_imported_here_goes_to_all(store: Store) -> None:
    """The timer and a version taken from a peer ask `peers` partners at random (the idle cost does
    not grow with the federation); a version imported beside the node is announced to every one."""
    roster = await holding(store, 1)
    fed = federation_view(roster.held)  # type: ignore[arg-type]
    partners = {n.id for n in fed.roster.nodes} - {"nl-customs"}
    assert len(partners) >= 2
    gossip = RosterGossip("nl-customs", roster, fed, peers=1)

    async def install() -> None:
        fed.install(federation_view(roster.held))  # type: ignore[arg-type]

    quiet = Peer([])
    gossip.attach(quiet, install)
    await gossip.announce()
    assert len(quiet.asked) == 1 and quiet.asked[0][0] in partners
    quiet.asked.clear()
    await gossip.announce(everyone=True)
    assert {node for node, _ in quiet.asked} == partners

    ahead = Peer(docs(2))  # a peer that holds version 2: taken from it, then told to one partner
    gossip.attach(ahead, install)
    assert (await gossip.pull(NodeId("ke-customs"))) is not None
    await asyncio.gather(*gossip._tasks)
    assert len(ahead.asked) == 2  # the pull, and one announcement

    await (await holding(store)).import_chain(as_file(3))  # `exchange roster import` beside the node
    quiet = Peer([])
    gossip.attach(quiet, install)
    assert await roster.reload()
    await gossip.installed()
    await asyncio.gather(*gossip._tasks)
    assert {node for node, _ in quiet.asked} == {n.id for n in fed.roster.nodes} - {"nl-customs"}
    await gossip.close()


async def test_a_version_imported_beside_the_node_and_then_pulled_from_a_peer_is_installed(store: Store) -> None:
    """`exchange roster import` beside the running node stores version 2; a partner's pull or offer
    of it reaches the node before its next `reload`: the pull adds nothing (it is stored) but holds
    it, so neither the pull nor the `reload` saw a change. The node still installs it; before, it
    ran on version 1 for good, its new partners without senders (a CI failure: the newcomer never
    got its invitation)."""
    roster = await holding(store, 1)
    fed = federation_view(roster.held)  # type: ignore[arg-type]
    gossip = RosterGossip("nl-customs", roster, fed)
    installs: list[int] = []

    async def install() -> None:
        installs.append(roster.held.version)  # type: ignore[union-attr]
        fed.install(federation_view(roster.held))  # type: ignore[arg-type]

    gossip.attach(Peer(docs(2)), install)
    await (await holding(store)).import_chain(as_file(2))  # beside the node
    imported = await gossip.pull(NodeId("ke-customs"))
    assert imported is not None and not imported.changed and imported.version == 2
    assert installs == [2] and fed.roster.version == 2
    assert not await roster.reload()  # and the timer has nothing left to do
    await gossip.close()


@pytest.mark.parametrize("serves", [[], docs(1)], ids=["nothing", "what-is-held"])
async def test_a_peer_that_names_a_version_it_does_not_serve_is_not_pulled_from_at_each_exchange(
    store: Store, serves: list[Any]
) -> None:
    """A pull that took nothing set no backoff: a partner whose header named a higher version than
    it served (an empty answer, or versions already held) was pulled from on every exchange."""
    roster = await holding(store, 1)
    gossip = RosterGossip("nl-customs", roster, federation_view(roster.held), clock=lambda: 100.0)  # type: ignore[arg-type]

    async def install() -> None:
        raise AssertionError("nothing to install")

    peer = Peer(serves)  # its answers name version 9
    gossip.attach(peer, install)
    for _ in range(3):  # three exchanges with it, each naming version 9
        gossip.seen("ke-customs", 9)
        await asyncio.gather(*gossip._tasks)
    assert len(peer.asked) == 1 and roster.held.version == 1  # type: ignore[union-attr]
    await gossip.close()


async def test_an_offer_of_more_versions_than_a_node_sends_is_refused_before_the_schema_reads_it(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An offer comes before any signature is checked: one of more than OFFER_VERSIONS versions
    (a node offers its newest four) was read whole, every version through the schema."""
    roster = await holding(store, 1)
    gossip = RosterGossip("nl-customs", roster, federation_view(roster.held))  # type: ignore[arg-type]
    read: list[object] = []
    parse = parse_roster_v2

    def spy(raw: object) -> Any:
        read.append(raw)
        return parse(raw)

    monkeypatch.setattr(federation, "parse_roster_v2", spy)
    rows = await stored(store)
    with pytest.raises(errors.RosterRefused, match=f"at most {OFFER_VERSIONS} are taken"):
        await gossip.take_offer(json.dumps(docs(1, 1, 2, 2, 3)).encode(), "offer:192.0.2.7")
    assert read == [] and await stored(store) == rows and roster.held.version == 1  # type: ignore[union-attr]
    assert (await audited(store))[-1]["error"] == "RosterRefused"


async def test_a_long_offer_is_parsed_off_the_event_loop(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """An offer of up to 16 MiB was parsed on the event loop (strict JSON, then the schema: about
    0.4 s for 10 MB), holding every request up. One of OFF_LOOP_FROM bytes or more is parsed in a
    thread; a short one still on the loop, where a thread's hand-off would cost more."""
    roster = await holding(store, 1)
    now = [100.0]
    gossip = RosterGossip("nl-customs", roster, federation_view(roster.held), clock=lambda: now[0])  # type: ignore[arg-type]
    threads: list[int] = []
    parse = federation._parse_chain

    def spy(blobs: Any, max_versions: int = 0) -> Any:
        threads.append(threading.get_ident())
        return parse(blobs, max_versions)

    monkeypatch.setattr(federation, "_parse_chain", spy)
    long = json.dumps(docs(2)).encode() + b" " * federation.OFF_LOOP_FROM
    assert (await gossip.take_offer(long, "offer:192.0.2.7")).version == 2
    now[0] += gossip.offer_interval
    assert (await gossip.take_offer(json.dumps(docs(2, 3)).encode(), "offer:192.0.2.7")).version == 3
    loop = threading.get_ident()
    assert [t != loop for t in threads] == [True, False]


async def test_a_partner_that_names_a_version_it_never_serves_holds_up_the_others_for_one_pull(
    store: Store,
) -> None:
    """A partner names a version far ahead and answers its pull slowly. One pull runs at a time,
    and the others' news was dropped meanwhile: an honest partner that holds the next version was
    not asked until the 10-minute announce (found by a read-only review). Now the partner that
    named the highest version meanwhile is asked as soon as the slow pull ends."""
    roster = await holding(store, 1)
    fed = federation_view(roster.held)  # type: ignore[arg-type]
    gossip = RosterGossip("nl-customs", roster, fed)
    slow, honest = (n.id for n in fed.roster.nodes if n.id != "nl-customs")
    release = asyncio.Event()

    class Partners(Peer):
        async def fetch(self, node: NodeId, path: str) -> Any:
            self.asked.append((node, path))
            if node == slow:
                await release.wait()
                raise errors.PeerError(f"{slow}: timed out")
            return {"version": 2, "versions": self.versions}

    async def install() -> None:
        return None

    peer = Partners(docs(2))
    gossip.attach(peer, install)
    gossip.seen(slow, 999_999)
    await asyncio.sleep(0)
    for _ in range(3):
        gossip.seen(honest, 2)
        gossip.seen("not-a-partner", 3)  # not kept: only listed partners are
    assert gossip._named == {honest: 2}
    release.set()

    async def taken() -> bool:
        return gossip.version() == 2

    await eventually(taken, what="version 2, from the honest partner")
    assert [node for node, _ in peer.asked][:2] == [slow, honest], peer.asked  # (then the peers are told)
    await gossip.close()


def test_the_hash_header_is_64_lowercase_hex_or_ignored() -> None:
    good = "ab" * 32
    assert header_hash(good) == good
    for bad in (None, "", "AB" * 32, "ab" * 31, "ab" * 33, "zz" * 32, " " + good[1:]):
        assert header_hash(bad) is None, bad


def forked(roster: Any, store: Store) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:  # recorded, then audited
        return bool(roster.equivocations) and any(e.get("error") == "RosterEquivocation" for e in await audited(store))

    return check


class Branch(Peer):
    """A peer on another branch of the chain: its version 2 is `equivocating()`, and with `ahead`
    it holds a version 3 that follows that one (both signed by the authority's threshold)."""

    def __init__(self, ahead: bool = False) -> None:
        two = parse_roster_v2(equivocating())
        self.two = roster_hash(two.roster)
        three = signed(alter(CHAIN[3].roster, previous=self.two), mrv.SIGNERS[3])
        super().__init__([two.model_dump(mode="json")] + ([three.model_dump(mode="json")] if ahead else []))

    async def fetch(self, node: NodeId, path: str) -> Any:
        self.asked.append((node, path))
        after = int(path.rsplit("=", 1)[1])
        return {"version": 2 + (len(self.versions) > 1), "versions": self.versions[max(after - 1, 0) :]}


async def _forked(
    store: Store, peer: Branch, clock: list[float] | None = None
) -> tuple[federation.FederationRoster, RosterGossip, list[int]]:
    roster = await holding(store, 1, 2)
    now = clock or [100.0]
    gossip = RosterGossip("nl-customs", roster, federation_view(roster.held), clock=lambda: now[0])  # type: ignore[arg-type]
    installs: list[int] = []

    async def install() -> None:
        installs.append(1)

    gossip.attach(peer, install)
    return roster, gossip, installs


async def test_a_peer_naming_the_held_version_with_another_hash_is_asked_for_it_and_the_fork_is_shown(
    store: Store,
) -> None:
    """Two versions 2, both signed by the authority: a node that holds one and hears a partner name
    the other's hash asks that partner for its copy once, refuses it as an equivocation, stores
    nothing, audits both hashes, and shows the fork in its roster's status."""
    peer = Branch()
    roster, gossip, installs = await _forked(store, peer)
    before, held = await stored(store), roster.held.hash  # type: ignore[union-attr]
    assert gossip.headers() == {"Exchange-Roster-Version": "2", "Exchange-Roster-Hash": held}
    gossip.seen("ke-customs", 2, held)  # the same version, the same hash: nothing to ask
    gossip.seen("ke-customs", 1, "00" * 32)  # an older version: the peer pulls from us (6a.11)
    assert peer.asked == [] and roster.equivocations == {}
    gossip.seen("ke-customs", 2, peer.two)
    await eventually(forked(roster, store), what="the fork recorded")
    assert peer.asked == [("ke-customs", "/fed/v1/roster?after=1")]
    fork = roster.equivocations[2]
    assert (fork.held_hash, fork.other_hash, fork.source) == (held, peer.two, "peer:ke-customs")
    assert await forks(store) == [(2, held, peer.two, "peer:ke-customs", canonical_json(peer.versions[0]))]
    assert await stored(store) == before and roster.held.hash == held and not installs  # type: ignore[union-attr]
    entry = (await audited(store))[-1]
    assert (entry["event"], entry["error"], entry["held_hash"], entry["offered_hash"]) == (
        "roster.refused",
        "RosterEquivocation",
        held,
        peer.two,
    )
    warning = roster.status().warning  # type: ignore[union-attr]
    assert warning is not None and held in warning and peer.two in warning and "ke-customs" in warning
    gossip.seen("ke-customs", 2, peer.two)  # asked once a version
    await asyncio.sleep(0.05)
    assert len(peer.asked) == 1
    await gossip.close()
    # Recorded in the database: a restart, another worker or `exchange roster status` reads it.
    again = await holding(store)
    assert again.equivocations == roster.equivocations and again.status().warning == warning  # type: ignore[union-attr]


async def test_a_peer_ahead_on_another_branch_is_asked_where_it_went_another_way(store: Store) -> None:
    """The partner holds a version 3 that follows its own version 2: the pull is refused (its 3 does
    not follow the 2 held here), and the node then asks for the partner's 2, the evidence."""
    peer = Branch(ahead=True)
    roster, gossip, installs = await _forked(store, peer)
    before = await stored(store)
    assert await gossip.pull(NodeId("ke-customs")) is None
    await eventually(forked(roster, store), what="the fork recorded")
    assert peer.asked == [("ke-customs", "/fed/v1/roster?after=2"), ("ke-customs", "/fed/v1/roster?after=1")]
    assert (roster.equivocations[2].other_hash, roster.equivocations[2].source) == (peer.two, "peer:ke-customs")
    assert [e.get("error") for e in await audited(store)][-2:] == ["RosterChainBroken", "RosterEquivocation"]
    assert await stored(store) == before and not installs
    await gossip.close()


async def test_a_hash_header_from_a_node_outside_the_roster_asks_nothing(store: Store) -> None:
    peer = Branch()
    roster, gossip, _ = await _forked(store, peer)
    gossip.seen("xx-nobody", 2, peer.two)
    await asyncio.sleep(0.05)
    assert peer.asked == [] and roster.equivocations == {}
    await gossip.close()


async def forks(store: Store) -> list[tuple[Any, ...]]:
    async with store.read() as conn:
        f = roster_forks.c
        query = sa.select(f.version, f.held_hash, f.other_hash, f.source, f.other).order_by(f.version)
        return [(*r[:4], bytes(r[4])) for r in await conn.execute(query)]


class Unsigned(Branch):
    """A peer that names another hash for version 2 and sends a version 2 the authority's threshold did not sign."""

    def __init__(self) -> None:
        super().__init__()
        raw = json.loads(equivocating())
        raw["signatures"] = raw["signatures"][:1]
        self.versions = [raw]


async def test_another_version_that_the_threshold_did_not_sign_is_no_fork(store: Store) -> None:
    """Only the authority's signatures make a fork: a peer's unsigned version 2 is refused as
    RosterThreshold (audited), and nothing is recorded or stored."""
    peer = Unsigned()
    roster, gossip, installs = await _forked(store, peer)
    before = await stored(store)
    gossip.seen("ke-customs", 2, peer.two)

    async def judged() -> bool:
        return any(e.get("error") == "RosterThreshold" for e in await audited(store))

    await eventually(judged, what="the unsigned version refused")
    assert roster.equivocations == {} and await forks(store) == []
    assert await stored(store) == before and not installs and roster.status().warning is None  # type: ignore[union-attr]
    await gossip.close()


class Unreachable(Branch):
    """A peer on another branch whose first answer does not come (a reset connection, a restart)."""

    async def fetch(self, node: NodeId, path: str) -> Any:
        if not self.asked:
            self.asked.append((node, path))
            raise errors.PeerError(f"{node} did not answer")
        return await super().fetch(node, path)


async def test_a_compare_that_was_not_answered_is_asked_again_after_the_pull_interval(store: Store) -> None:
    peer = Unreachable()
    clock = [100.0]
    roster, gossip, _ = await _forked(store, peer, clock)
    gossip.seen("ke-customs", 2, peer.two)
    await eventually(lambda: _asked(peer, 1), what="the first ask")
    await asyncio.sleep(0.05)
    gossip.seen("ke-customs", 2, peer.two)  # within the pull interval: not yet
    await asyncio.sleep(0.05)
    assert len(peer.asked) == 1 and roster.equivocations == {}
    clock[0] += gossip.pull_interval
    gossip.seen("ke-customs", 2, peer.two)
    await eventually(forked(roster, store), what="the fork recorded on the second ask")
    assert len(peer.asked) == 2
    await gossip.close()


async def _asked(peer: Peer, count: int) -> bool:
    return len(peer.asked) >= count


async def test_a_fork_recorded_keeps_its_first_source_and_its_warning_joins_the_expiry_warning(store: Store) -> None:
    """A second offer of the same other version (from another address) changes nothing recorded; a
    held version that expires soon says both."""
    late = parse_timestamp(CHAIN[2].roster.expires) - dt.timedelta(hours=1)
    roster = await holding(store, 1, 2)
    for source in ("peer:ke-customs", "offer:192.0.2.1"):
        with pytest.raises(errors.RosterEquivocation):
            await roster.import_chain(equivocating(), source=source)
    assert roster.equivocations[2].source == "peer:ke-customs" and len(await forks(store)) == 1
    expiring = federation.FederationRoster(store, clock=lambda: late)
    await expiring.load()
    warning = expiring.status().warning  # type: ignore[union-attr]
    assert warning is not None and "signed two roster versions 2" in warning and "expires in 0 days" in warning


async def test_what_a_peer_says_after_the_gossip_closed_begins_nothing(store: Store) -> None:
    """A sender's answer can come in while the node stops, after the gossip closed: it neither
    pulls nor compares (a task begun then would outlive the node)."""
    peer = Branch(ahead=True)
    _, gossip, _ = await _forked(store, peer)
    await gossip.close()
    gossip.seen("ke-customs", 3)
    gossip.seen("ke-customs", 2, peer.two)
    await asyncio.sleep(0.05)
    assert peer.asked == [] and not gossip._tasks


async def test_a_peer_behind_on_another_branch_is_found_by_the_node_ahead(store: Store) -> None:
    """The node holds 1, 2, 3; the partner holds 1 and another 2, signed by the authority, and
    names it. The node, ahead, compares the hash named with the one it stored for version 2, asks
    the partner for its copy, checks it as a successor of its own version 1, and records and
    audits the fork; a partner on the same branch, or one whose other 2 is not signed, is no fork."""
    roster = await holding(store, 1, 2, 3)
    gossip = RosterGossip("nl-customs", roster, federation_view(roster.held), clock=lambda: 100.0)  # type: ignore[arg-type]
    peer = Branch()
    gossip.attach(peer, _nothing)
    ours = (await stored(store))[1][1]
    for _ in range(2):  # the first look reads the stored hashes
        gossip.seen("ke-customs", 2, ours)  # the same branch: nothing to ask
        await asyncio.sleep(0.05)
    assert peer.asked == []
    unsigned = Unsigned()
    gossip.attach(unsigned, _nothing)
    gossip.seen("za-customs", 2, unsigned.two)
    await eventually(lambda: _asked(unsigned, 1), what="the ask of the unsigned branch")
    await asyncio.sleep(0.05)
    assert roster.equivocations == {} and await forks(store) == []
    gossip.attach(peer, _nothing)
    gossip.seen("ke-customs", 2, peer.two)
    await eventually(forked(roster, store), what="the fork recorded")
    assert peer.asked == [("ke-customs", "/fed/v1/roster?after=1")]
    fork = roster.equivocations[2]
    assert (fork.held_hash, fork.other_hash, fork.source) == (ours, peer.two, "peer:ke-customs")
    entry = [e for e in await audited(store) if e.get("error") == "RosterEquivocation"][-1]
    assert (entry["held"], entry["offered"], entry["held_hash"], entry["offered_hash"]) == (3, 2, ours, peer.two)
    assert roster.held.version == 3 and roster.status().warning is None  # type: ignore[union-attr]
    await gossip.close()


async def _nothing() -> None:
    return None


def version_4() -> dict[str, Any]:
    """A version 4 after the recorded 3, signed by its authority."""
    doc = propose(CHAIN[3].roster, CHAIN[3].roster.issued, CHAIN[3].roster.expires)
    return signed(doc, mrv.SIGNERS[3]).model_dump(mode="json")


async def test_a_peer_behind_that_went_on_along_its_branch_is_walked_back_to_the_fork(store: Store) -> None:
    """The node holds 1 to 4; the partner 1 and another 2 and 3, and names its 3. Its 3 does not
    follow the node's 2, so the node asks for its 2, which does follow the node's 1: the fork is at
    2, recorded there. One request per version, and nothing stored."""
    roster = await holding(store, 1, 2, 3)
    await roster.import_chain(json.dumps(version_4()).encode())
    before = await stored(store)
    gossip = RosterGossip("nl-customs", roster, federation_view(roster.held), clock=lambda: 100.0)  # type: ignore[arg-type]
    peer = Branch(ahead=True)
    gossip.attach(peer, _nothing)
    three = roster_hash(parse_roster_v2(peer.versions[1]).roster)
    for _ in range(2):  # the first look reads the stored hashes
        gossip.seen("ke-customs", 3, three)
        await asyncio.sleep(0.05)
    await eventually(forked(roster, store), what="the fork recorded")
    assert peer.asked == [("ke-customs", "/fed/v1/roster?after=2"), ("ke-customs", "/fed/v1/roster?after=1")]
    assert list(roster.equivocations) == [2] and roster.equivocations[2].other_hash == peer.two
    assert await stored(store) == before
    await gossip.close()


async def test_below_the_held_version_version_1_and_a_first_stored_version_are_not_judged(store: Store) -> None:
    """A fork of version 1 has nothing before it to be judged by, nor has a version that is the
    first this node stored (it took it out of band): neither is asked for nor recorded, even by a
    partner that names another hash for it and serves this node's own copy (found by review)."""
    roster = await holding(store, 2, 3)  # a node that took version 2 out of band
    gossip = RosterGossip("nl-customs", roster, federation_view(roster.held), clock=lambda: 100.0)  # type: ignore[arg-type]
    peer = Peer(docs(1, 2, 3))
    gossip.attach(peer, _nothing)
    for _ in range(2):
        gossip.seen("ke-customs", 1, "00" * 32)
        gossip.seen("ke-customs", 2, "00" * 32)
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.1)
    assert ("ke-customs", "/fed/v1/roster?after=0") not in peer.asked  # version 1: never asked
    assert roster.equivocations == {} and await forks(store) == []
    assert not [e for e in await audited(store) if e.get("error") == "RosterEquivocation"]
    await gossip.close()


async def test_below_the_held_version_an_unsigned_copy_is_no_fork_and_not_audited(store: Store) -> None:
    roster = await holding(store, 1, 2, 3)
    gossip = RosterGossip("nl-customs", roster, federation_view(roster.held), clock=lambda: 100.0)  # type: ignore[arg-type]
    peer = Unsigned()
    gossip.attach(peer, _nothing)
    entries = len(await audited(store))
    for _ in range(2):
        gossip.seen("ke-customs", 2, peer.two)
        await asyncio.sleep(0.05)
    await eventually(lambda: _asked(peer, 1), what="the ask")
    await asyncio.sleep(0.1)
    assert roster.equivocations == {} and await forks(store) == [] and len(await audited(store)) == entries
    await gossip.close()
