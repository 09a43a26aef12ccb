"""The roster pin (`RosterPin`, exchange.keystore): the highest roster version a node took, kept
beside its keys, outside its database. Someone who can write the database alone cannot take a
pinned node back to an older chain (one that still trusts a node revoked since) or give it another
chain of their own making: the node does not start, and one line says why and what to do. A node
of release 0.1.0, which has no pin before its first version, takes only the migration of its v1
roster as the first stored version. Both databases.

The versions are the golden ones of tests/vectors/roster-v2.json (a 2-of-3 authority).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from exchange import errors
from exchange.crypto import canonical_json
from exchange.keystore import RosterPin
from exchange.protocol.roster import Federation
from exchange.protocol.roster2_model import SignedRosterV2
from exchange.protocol.rosterchain import TrustedRoster, roster_hash, sign_roster_v2
from exchange.protocol.rostermigration import authority
from exchange.service.federation import FederationRoster, V1Trust
from exchange.service.roster_restore import keep_pin
from exchange.store import Store
from exchange.store.tables import roster_versions
from tests.protocol.test_roster_chain import CHAIN, V1_FORMAT
from tests.service.test_federation_roster import NOW, as_file
from tests.vectors import make_roster_vectors as mrv
from tests.vectors.make_roster_vectors import alter
from tests.vectors.make_vectors import signing_key


def pinned(tmp_path: Path) -> RosterPin:
    return RosterPin(tmp_path / "keys")


async def started(store: Store, pin: RosterPin) -> FederationRoster:
    roster = FederationRoster(store, clock=lambda: NOW, pin=pin)
    await roster.load()
    return roster


async def edit(store: Store, change: Callable[[Any], Awaitable[None]]) -> None:
    async def job(conn: Any, _audit: Any) -> None:
        await change(conn)

    await store.write(job)


async def test_each_version_taken_is_pinned_and_a_restart_on_the_same_chain_starts(
    store: Store, tmp_path: Path
) -> None:
    pin = pinned(tmp_path)
    roster = await started(store, pin)
    assert pin.read() is None  # nothing held, nothing pinned
    await roster.import_chain(as_file(1))
    assert pin.read() == (1, roster_hash(CHAIN[1].roster))
    await roster.import_chain(as_file(2, 3))
    assert pin.read() == (3, roster_hash(CHAIN[3].roster))
    again = await started(store, pin)
    assert again.held is not None and again.held.version == 3
    pin.write(2, roster_hash(CHAIN[2].roster))  # never lowered
    assert pin.read() == (3, roster_hash(CHAIN[3].roster))


async def test_a_node_without_a_pin_pins_what_its_database_holds(store: Store, tmp_path: Path) -> None:
    """A node upgraded to a release with pins has none yet: its first start pins its chain's head."""
    roster = FederationRoster(store, clock=lambda: NOW)  # as before pins
    await roster.load()
    await roster.import_chain(as_file(1, 2))
    pin = pinned(tmp_path)
    await started(store, pin)
    assert pin.read() == (2, roster_hash(CHAIN[2].roster))


async def test_a_database_rolled_back_to_an_older_chain_is_refused(store: Store, tmp_path: Path) -> None:
    pin = pinned(tmp_path)
    roster = await started(store, pin)
    await roster.import_chain(as_file(1, 2, 3))

    async def drop_latest(conn: Any) -> None:  # as a restored backup, or an attacker, would leave it
        await conn.execute(sa.delete(roster_versions).where(roster_versions.c.version == 3))

    await edit(store, drop_latest)
    with pytest.raises(errors.StoredRosterInvalid) as refused:
        await started(store, pin)
    assert "holds roster version 2, but this node took version 3" in refused.value.detail
    assert str(pin.path) in refused.value.detail and "restore the database from a backup" in refused.value.detail
    assert pin.read() == (3, roster_hash(CHAIN[3].roster))  # the pin is left as it was


async def test_a_chain_of_someone_elses_making_is_refused(store: Store, tmp_path: Path) -> None:
    """Every stored row replaced by a chain the attacker signed for itself, up to the pinned version:
    consistent with itself (the restore takes it), not the chain this node took."""
    pin = pinned(tmp_path)
    roster = await started(store, pin)
    await roster.import_chain(as_file(1, 2))
    attacker = signing_key("attacker/ed25519")
    forged: list[SignedRosterV2] = []
    previous: str | None = None
    for version in (1, 2):
        fields: dict[str, Any] = {"authority": authority([("attacker", attacker.verify_key)], 1).model_dump()}
        if previous is not None:
            fields["previous"] = previous
        doc = alter(CHAIN[version].roster, **fields)
        forged.append(SignedRosterV2(roster=doc, signatures=[sign_roster_v2(doc, attacker)]))
        previous = roster_hash(doc)

    async def replace(conn: Any) -> None:
        await conn.execute(sa.delete(roster_versions))
        for signed in forged:
            row = {
                "version": signed.roster.version,
                "hash": roster_hash(signed.roster),
                "signed": canonical_json(signed.model_dump(mode="json")),
                "installed_at": "2026-12-04T00:00:00.000Z",
            }
            await conn.execute(sa.insert(roster_versions).values(**row))

    await edit(store, replace)
    unpinned = FederationRoster(store, clock=lambda: NOW)
    await unpinned.load()  # what a node without its pin would run on: the attacker's authority
    assert unpinned.held is not None and unpinned.held.hash == roster_hash(forged[1].roster)
    with pytest.raises(errors.StoredRosterInvalid, match="roster version 2 is not the one this node took"):
        await started(store, pin)


async def test_a_pin_file_that_is_not_a_pin_is_a_clear_error(tmp_path: Path) -> None:
    pin = pinned(tmp_path)
    pin.path.parent.mkdir(parents=True)
    for bad in (b"not json", b'{"version": 0, "hash": "ab"}', json.dumps({"version": 3}).encode()):
        pin.path.write_bytes(bad)
        with pytest.raises(errors.ConfigError, match="is not a roster pin"):
            pin.read()


async def test_a_v1_node_with_no_version_refuses_a_stored_chain_that_is_not_its_migration(
    store: Store, tmp_path: Path
) -> None:
    """A node of release 0.1.0 (a v1 roster file) has no pin until it takes a version: a chain
    written into its database by hand must start with the migration of its v1 roster, as an
    import must, or the node would trust (and then pin) an authority of the writer's own."""
    v1_key = signing_key(mrv.V1_AUTHORITY).verify_key
    v1 = V1Trust(Federation.verify(V1_FORMAT, v1_key), v1_key)
    attacker = signing_key("attacker/ed25519")
    doc = alter(CHAIN[1].roster, authority=authority([("attacker", attacker.verify_key)], 1).model_dump())
    forged = SignedRosterV2(roster=doc, signatures=[sign_roster_v2(doc, attacker)])

    async def plant(conn: Any) -> None:
        row = {
            "version": 1,
            "hash": roster_hash(doc),
            "signed": canonical_json(forged.model_dump(mode="json")),
            "installed_at": "2026-12-04T00:00:00.000Z",
        }
        await conn.execute(sa.insert(roster_versions).values(**row))

    await edit(store, plant)
    pin = pinned(tmp_path)
    roster = FederationRoster(store, v1=v1, clock=lambda: NOW, pin=pin)
    with pytest.raises(errors.StoredRosterInvalid, match="stored roster version 1 does not verify"):
        await roster.load()
    assert pin.read() is None  # nothing of it pinned

    async def unplant(conn: Any) -> None:
        await conn.execute(sa.delete(roster_versions))

    await edit(store, unplant)
    await roster.load()
    await roster.import_chain(as_file(1, 2))  # its real migration, then the chain: taken and pinned
    again = FederationRoster(store, v1=v1, clock=lambda: NOW, pin=pin)
    await again.load()
    assert again.held is not None and again.held.version == 2 and pin.read() == (2, roster_hash(CHAIN[2].roster))


def test_a_pin_that_cannot_be_written_is_logged_not_raised(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The version is stored and installed before it is pinned: a keys folder that cannot be
    written leaves the pin behind (a lower bound), and says so, rather than failing the import."""
    blocked = tmp_path / "keys"
    blocked.write_text("a file where the keys folder should be")
    held = TrustedRoster.restore(CHAIN[1])
    keep_pin(RosterPin(blocked), held)
    assert "could not be written" in caplog.text
