"""The roster v2 chain a node holds (exchange.service.federation), on SQLite and PostgreSQL: a good
chain is persisted, installed and audited; each refusal stores nothing and is audited (within
bounds); the held version survives a restart, and nothing older is taken after it.

The versions are the golden ones of tests/vectors/roster-v2.json (a 2-of-3 authority).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from exchange import errors
from exchange.crypto import canonical_json
from exchange.protocol.roster import Federation
from exchange.protocol.roster2_model import SignedRosterV2
from exchange.protocol.rosterchain import TrustedRoster, parse_roster_v2, roster_hash, sign_roster_v2
from exchange.protocol.rostermigration import authority, propose
from exchange.service.federation import FederationRoster, V1Trust
from exchange.service.refusal_budget import RefusalBudget
from exchange.store import Store, audit_log
from exchange.store.tables import roster_versions
from tests.protocol.test_roster_chain import CHAIN, V1_FORMAT
from tests.vectors import make_roster_vectors as mrv
from tests.vectors.make_roster_vectors import alter, signed, when
from tests.vectors.make_vectors import signing_key

NOW = when(mrv.NOW)


def as_file(*versions: int) -> bytes:
    """Versions of the recorded chain as a file: one signed roster, or a JSON array of them."""
    docs = [CHAIN[v].model_dump(mode="json") for v in versions]
    return json.dumps(docs[0] if len(docs) == 1 else docs, indent=2).encode()


async def stored(store: Store) -> list[tuple[int, str, bytes]]:
    async with store.read() as conn:
        rows = await conn.execute(
            sa.select(roster_versions.c.version, roster_versions.c.hash, roster_versions.c.signed).order_by(
                roster_versions.c.version
            )
        )
        return [(int(r.version), str(r.hash), bytes(r.signed)) for r in rows]


async def audited(store: Store) -> list[dict[str, Any]]:
    async with store.read() as conn:
        rows = await conn.execute(sa.select(audit_log.c.entry).order_by(audit_log.c.idx))
        entries = [json.loads(bytes(r.entry)) for r in rows]
    return [e for e in entries if e["event"].startswith("roster.")]


async def holding(store: Store, *versions: int, at: dt.datetime = NOW) -> FederationRoster:
    roster = FederationRoster(store, clock=lambda: at)
    await roster.load()
    if versions:
        await roster.import_chain(as_file(*versions))
    return roster


# -- accepted -----------------------------------------------------------------------------------


async def test_a_good_chain_is_persisted_installed_and_audited(store: Store) -> None:
    roster = await holding(store)
    assert roster.held is None and roster.status() is None
    first = await roster.import_chain(as_file(1))
    assert (first.before, first.version, first.added) == (0, 1, 1)
    rest = await roster.import_chain(as_file(2, 3))
    assert (rest.before, rest.version, rest.hash, rest.added) == (1, 3, roster_hash(CHAIN[3].roster), 2)
    assert roster.held is not None and roster.held.version == 3

    rows = await stored(store)
    assert [(v, h) for v, h, _ in rows] == [(v, roster_hash(CHAIN[v].roster)) for v in (1, 2, 3)]
    assert all(raw == canonical_json(CHAIN[v].model_dump(mode="json")) for v, _, raw in rows)
    assert await roster.chain(after=1) == [rows[1][2], rows[2][2]]
    entries = await audited(store)
    assert [(e["event"], e["version"], e["held"], e["versions"]) for e in entries] == [
        ("roster.installed", 1, 0, 1),
        ("roster.installed", 3, 1, 2),
    ]
    assert entries[1]["hash"] == rest.hash and entries[1]["source"] == "import"

    again = await roster.import_chain(as_file(3))  # the held version again: nothing changes
    assert not again.changed and len(await stored(store)) == 3 and len(await audited(store)) == 2


async def test_a_whole_history_is_taken_from_the_held_version(store: Store) -> None:
    roster = await holding(store, 1, 2)
    done = await roster.import_chain([as_file(3), as_file(1, 2)])  # any order, the known past included
    assert (done.before, done.version, done.added) == (2, 3, 1)


async def test_the_read_api_answers_from_the_held_version(store: Store) -> None:
    roster = await holding(store, 1, 2, 3)
    status = roster.status()
    assert status is not None
    assert (status.version, status.threshold, status.expired, status.warning) == (3, 2, False, None)
    soon = FederationRoster(store, clock=lambda: when(CHAIN[3].roster.expires) - dt.timedelta(days=3))
    await soon.load()
    assert soon.status() is not None and "expires in 3 days" in str(soon.status().warning)  # type: ignore[union-attr]
    assert status.nodes == {"active": len(CHAIN[3].roster.nodes) - 1, "suspended": 0, "revoked": 1}
    ke = roster.node("ke-customs")
    signing = CHAIN[3].roster.nodes[[n.id for n in CHAIN[3].roster.nodes].index("ke-customs")].keys
    assert ke.status == "active" and ke.signing_kid == next(
        k.kid for k in signing if k.use == "signing" and k.state == "active"
    )
    assert {k.state for k in ke.keys} >= {"active", "compromised"}
    revoked = roster.node("gb-avsec")
    assert (revoked.status, revoked.signing_kid, revoked.tls_pin) == ("revoked", None, None)
    with pytest.raises(errors.UnknownPeer):
        roster.node("xx-nobody")
    with pytest.raises(errors.NotFound):
        FederationRoster(store).node("ke-customs")  # before the first import


# -- refused, with nothing stored ---------------------------------------------------------------


def equivocating() -> bytes:
    variant = alter(CHAIN[2].roster, issued="2025-04-01T09:00:01.000Z")
    return json.dumps(signed(variant, ["icao", "rilo-ap"]).model_dump(mode="json")).encode()


def under_threshold() -> bytes:
    raw = CHAIN[2].model_dump(mode="json")
    raw["signatures"] = raw["signatures"][:1]
    return json.dumps(raw).encode()


REFUSALS: dict[str, tuple[tuple[int, ...], Callable[[], bytes], type[errors.ExchangeError], dt.datetime]] = {
    "gap": ((1,), lambda: as_file(3), errors.RosterGap, NOW),
    "rollback": ((1, 2, 3), lambda: as_file(2), errors.RosterRollback, NOW),
    "equivocation": ((1, 2), equivocating, errors.RosterEquivocation, NOW),
    "threshold": ((1,), under_threshold, errors.RosterThreshold, NOW),
    "expired": ((1,), lambda: as_file(2), errors.RosterExpired, when(mrv.NOW_V2_EXPIRED)),
    "not-a-roster": ((1,), lambda: b'{"roster": 1}', errors.InvalidInput, NOW),
    "another-history": ((1, 2), lambda: _other_history(), errors.RosterRollback, NOW),
    "issued-in-the-future": ((1, 2, 3), lambda: _from_the_future(), errors.RosterInvalid, NOW),
}


def _from_the_future() -> bytes:
    """Version 4 issued ten years after the receiver's clock: held, it would refuse every successor."""
    doc = propose(CHAIN[3].roster, "2035-06-01T00:00:00.000Z", "2036-06-01T00:00:00.000Z")
    return json.dumps(signed(doc, ["wco-secretariat", "icao"]).model_dump(mode="json")).encode()


def _other_history() -> bytes:
    """Version 2 held; offered: a version 1 this node did not take, then the real 2 and 3."""
    other = alter(CHAIN[1].roster, issued="2025-03-01T12:00:01.000Z")
    docs = [signed(other, mrv.SIGNERS[1]).model_dump(mode="json")]
    docs += [CHAIN[v].model_dump(mode="json") for v in (2, 3)]
    return json.dumps(docs).encode()


@pytest.mark.parametrize("case", REFUSALS)
async def test_each_refusal_has_its_error_stores_nothing_and_is_audited(store: Store, case: str) -> None:
    before, offer, error, at = REFUSALS[case]
    roster = await holding(store, *before)
    held = roster.held
    rows, entries = await stored(store), await audited(store)
    with pytest.raises(errors.ExchangeError) as caught:
        await FederationRoster(store, clock=lambda: at).import_chain(offer())
    assert type(caught.value) is error, caught.value
    assert await stored(store) == rows
    assert roster.held is held
    refusal = (await audited(store))[len(entries) :]
    assert [(e["event"], e["error"], e["held"]) for e in refusal] == [("roster.refused", error.__name__, before[-1])]
    assert len(refusal[0]["detail"]) <= 200
    if case == "equivocation":  # the evidence: both hashes of version 2
        assert refusal[0]["held_hash"] == roster_hash(CHAIN[2].roster) != refusal[0]["offered_hash"]


async def test_refusals_are_audited_within_bounds(store: Store) -> None:
    now = [NOW]
    roster = FederationRoster(store, clock=lambda: now[0], budget=RefusalBudget(per_interval=3))
    await roster.import_chain(as_file(1))
    for _ in range(10):
        with pytest.raises(errors.RosterGap):
            await roster.import_chain(as_file(3), source="peer:ke-customs")
    assert len(await audited(store)) == 1 + 3
    now[0] += dt.timedelta(minutes=1)
    with pytest.raises(errors.RosterGap):
        await roster.import_chain(as_file(3), source="peer:ke-customs")
    last = (await audited(store))[-1]
    assert (len(await audited(store)), last["suppressed"]) == (5, 7)


async def test_a_flood_of_offers_never_keeps_a_peers_equivocation_out_of_the_log(store: Store) -> None:
    """The budget's table was never pruned: once 1,000 sources had refused, every new one,
    `peer:` included, shared one window, which offers from fresh addresses kept full, so a peer's
    equivocation (evidence against the authority) was only counted. Offers now have a table of
    their own, and windows an interval old make room for new sources."""
    now = [NOW]
    budget = RefusalBudget()
    roster = FederationRoster(store, clock=lambda: now[0], budget=budget)
    await roster.import_chain(as_file(1, 2))
    for i in range(1_000):  # offers from 1,000 sources in the first minute
        assert budget.admit(f"offer:198.51.100.{i}", now[0]) == 0
    for minute in range(5):  # and 10 more every minute after: junk that keeps the shared window full
        now[0] += dt.timedelta(minutes=1)
        for i in range(10 + 1_000 * (minute == 0)):
            budget.admit(f"offer:203.0.113.{minute}-{i}", now[0])
    entries = len(await audited(store))
    with pytest.raises(errors.RosterEquivocation):
        await roster.import_chain(equivocating(), source="peer:ke-customs")
    refusal = (await audited(store))[entries:]
    assert [(e["error"], e["source"]) for e in refusal] == [("RosterEquivocation", "peer:ke-customs")]
    assert refusal[0]["held_hash"] != refusal[0]["offered_hash"]
    assert budget.admit("offer:192.0.2.1", now[0]) == 0  # a new source past the old windows: its own
    assert sum(len(t) for t in budget._tables) <= 2 * (budget.max_sources + 1)


def test_windows_are_pruned_and_what_they_counted_is_carried() -> None:
    """A window an interval old is dropped when a new source needs room; the refusals it only
    counted go into the shared window's next entry, not lost."""
    budget = RefusalBudget(per_interval=1, max_sources=2)
    assert budget.admit("offer:a", NOW) == 0
    assert budget.admit("offer:a", NOW) is None  # counted only: 1
    assert budget.admit("offer:b", NOW) == 0
    assert budget.admit("offer:c", NOW) == 0  # no room: the shared window
    assert budget.admit("offer:d", NOW) is None
    later = NOW + budget.interval
    assert budget.admit("offer:e", later) == 0  # a, b and the shared window made room
    assert budget.admit("offer:f", later) == 1 + 1  # no room again: the shared window, with a's count and d's
    assert budget.admit("peer:ke-customs", later) == 0  # a table of its own
    assert [list(t) for t in budget._tables] == [["other", "offer:e"], ["peer:ke-customs"]]


async def test_an_expected_hash_that_differs_refuses_the_import(store: Store) -> None:
    roster = await holding(store)
    with pytest.raises(errors.RosterRefused, match="not the expected"):
        await roster.import_chain(as_file(1), expect_hash="0" * 64)
    assert await stored(store) == []
    done = await roster.import_chain(as_file(1), expect_hash=roster_hash(CHAIN[1].roster))
    assert done.version == 1


# -- restarts, and other processes on the same database -------------------------------------------


async def test_a_restart_keeps_the_version_and_refuses_older_ones(url: str) -> None:
    store = await Store.open(url)
    try:
        await holding(store, 1, 2, 3)
    finally:
        await store.close()
    late = when("2026-01-01T00:00:00Z")  # expired since: kept all the same
    store = await Store.open(url)
    try:
        roster = await holding(store, at=late)
        status = roster.status()
        assert status is not None and (status.version, status.expired) == (3, True)
        assert status.warning == "roster version 3 has expired: import a fresh version"
        for older in (as_file(2), as_file(1, 2)):
            with pytest.raises(errors.RosterRollback):
                await roster.import_chain(older)
        assert [v for v, _, _ in await stored(store)] == [1, 2, 3]
    finally:
        await store.close()


async def test_another_process_import_is_seen_before_the_next_one(store: Store) -> None:
    ours, theirs = await holding(store, 1), await holding(store)
    await theirs.import_chain(as_file(2))
    assert ours.held is not None and ours.held.version == 1
    with pytest.raises(errors.RosterRollback):
        await ours.import_chain(as_file(1, 1))  # judged from version 2, which the database holds
    assert (await ours.import_chain(as_file(3))).before == 2


async def test_a_tampered_stored_version_stops_the_load(store: Store) -> None:
    await holding(store, 1, 2)
    raw = CHAIN[2].model_dump(mode="json")
    raw["signatures"] = raw["signatures"][:1]

    async def tamper(conn: Any, audit: Any) -> None:
        await conn.execute(
            sa.update(roster_versions).where(roster_versions.c.version == 2).values(signed=canonical_json(raw))
        )

    await store.write(tamper)
    with pytest.raises(errors.ConfigError, match="stored roster version 2 does not verify"):
        await FederationRoster(store).load()


# -- a 0.1.0 node takes the migration of its v1 roster first -----------------------------------


async def test_a_v1_node_takes_its_migration_then_the_chain(store: Store) -> None:
    authority = signing_key(mrv.V1_AUTHORITY).verify_key
    v1 = V1Trust(Federation.verify(V1_FORMAT, authority), authority)
    roster = FederationRoster(store, v1=v1, clock=lambda: NOW)
    unsigned_by_v1 = signed(CHAIN[1].roster, ["wco-secretariat", "icao"])
    with pytest.raises(errors.RosterThreshold):
        await roster.import_chain(json.dumps(unsigned_by_v1.model_dump(mode="json")).encode())
    assert await stored(store) == []
    done = await roster.import_chain(as_file(1, 2, 3))
    assert (done.before, done.version, done.added) == (0, 3, 3)


async def test_a_second_copy_of_a_version_whose_signatures_do_not_count_is_never_kept(store: Store) -> None:
    """An offer (no client certificate needed) listing version N+1 twice, the second copy's
    signatures not counting: the first is checked and taken, and the second (same document,
    taken without a check as nothing changes) was what got stored; the node then could not
    restart, and peers refused what it served. Now the checked copy is what is stored."""
    roster = await holding(store, 1)
    good = CHAIN[2].model_dump(mode="json")
    kid = good["signatures"][0]["kid"]
    forged = dict(good, signatures=[{"kid": kid, "signature": good["signatures"][1]["signature"]}])
    await roster.import_chain(json.dumps([good, forged]).encode(), source="offer:203.0.113.9")
    for raw in await roster.chain(after=1):  # what peers are served verifies
        TrustedRoster.restore(parse_roster_v2(raw))
    restarted = FederationRoster(store, clock=lambda: NOW)
    await restarted.load()  # and the node starts again
    held = restarted.held
    assert held is not None and held.version == 2


async def test_a_version_appended_to_the_table_by_hand_stops_the_load(store: Store) -> None:
    """The load checked the top stored version against its own authority alone: a row appended by
    hand, version 4 naming version 3 as previous, with a new authority of the attacker's signing it,
    was taken at the next start with every key and pin it listed (and `audit verify --node` took
    its keys). The chain is now followed from the first stored version, and version 4 does not
    follow version 3: its signatures are not of version 3's authority."""
    running = await holding(store, 1, 2, 3)
    attacker = signing_key("attacker/ed25519")
    doc = alter(
        CHAIN[3].roster,
        version=4,
        previous=roster_hash(CHAIN[3].roster),
        authority=authority([("attacker", attacker.verify_key)], 1).model_dump(),
    )
    forged = SignedRosterV2(roster=doc, signatures=[sign_roster_v2(doc, attacker)])
    TrustedRoster.restore(forged)  # consistent with itself: what the old load checked

    async def append(conn: Any, audit: Any) -> None:
        row = {"version": 4, "hash": roster_hash(doc), "signed": canonical_json(forged.model_dump(mode="json"))}
        await conn.execute(sa.insert(roster_versions).values(**row, installed_at="2026-12-03T00:00:00.000Z"))

    await store.write(append)
    with pytest.raises(errors.ConfigError, match="stored roster version 4 does not verify, after version 3"):
        await FederationRoster(store).load()
    with pytest.raises(errors.ConfigError, match="stored roster version 4 does not verify, after version 3"):
        await running.reload()  # a node that held version 3 when the row appeared
    assert running.held is not None and running.held.version == 3
