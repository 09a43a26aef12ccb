"""A node's roster chain read back from its database (exchange.service.federation): every stored
version checked against the one before it, so that the database alone cannot make the node trust
keys and pins no authority signed for; and reaching the version the node pinned outside it
(`check_pin`), so that the database alone cannot take it back to an older chain either."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.errors import InvalidInput, RosterRefused, StoredRosterInvalid
from exchange.keystore import RosterPin
from exchange.protocol.rosterchain import TrustedRoster, parse_roster_v2
from exchange.store.tables import roster_versions


async def restore_chain(conn: AsyncConnection, held: TrustedRoster | None = None) -> TrustedRoster | None:
    """The highest stored version, reached from `held` (or from the first stored version) by the
    chain's rules, one stored version after another (6a.4 rules 1 to 8; not expiry, nor the
    clock's rule, which were judged when each was taken). A hand-edited table cannot make the
    node run on a version of its own making: a row appended with a new authority signed by itself
    (the check of the top row alone took it, with every key and pin it lists) does not follow
    the version before it, nor does a row edited in place."""
    after = held.version if held is not None else 0
    rows = (
        await conn.execute(
            sa.select(roster_versions.c.version, roster_versions.c.hash)
            .where(roster_versions.c.version > after)
            .order_by(roster_versions.c.version)
        )
    ).all()
    trusted = held
    for row in rows:  # one version's bytes at a time: a version may be megabytes
        raw = await conn.scalar(sa.select(roster_versions.c.signed).where(roster_versions.c.version == row.version))
        try:
            signed = parse_roster_v2(bytes(raw or b""))
            trusted = TrustedRoster.restore(signed) if trusted is None else trusted.accept(signed)
        except (RosterRefused, InvalidInput) as exc:
            since = f", after version {trusted.version}" if trusted is not None else ""
            raise StoredRosterInvalid(
                f"the stored roster version {row.version} does not verify{since}: {exc.detail}"
            ) from exc
        if (trusted.version, trusted.hash) != (row.version, row.hash):
            raise StoredRosterInvalid(f"the stored roster version {row.version} is not the one its row names")
    return trusted


async def check_pin(conn: AsyncConnection, held: TrustedRoster | None, pin: RosterPin) -> None:
    """The chain `held` was restored from must reach the version this node pinned (`RosterPin`),
    with the pinned hash, else StoredRosterInvalid: the database was rolled back to an older chain
    (which may still trust a node revoked since) or given another one. Then the held version is
    pinned, if later (or first: a node's first start with a pin pins what its database holds)."""
    pinned = pin.read()
    if pinned is not None:
        version, digest = pinned
        fix = (
            f"restore the database from a backup taken after version {version}; or, if this database is the "
            f"one to trust, remove {pin.path} (the node then pins what it holds and takes newer versions "
            "from its partners)"
        )
        if held is None or held.version < version:
            top = f"version {held.version}" if held is not None else "no version"
            raise StoredRosterInvalid(
                f"the database holds roster {top}, but this node took version {version} ({pin.path}): {fix}"
            )
        stored = await conn.scalar(sa.select(roster_versions.c.hash).where(roster_versions.c.version == version))
        if stored != digest:
            raise StoredRosterInvalid(
                f"the database's roster version {version} is not the one this node took (hash {digest}, "
                f"{pin.path}): its chain was replaced; {fix}"
            )
    if held is not None:
        pin.write(held.version, held.hash)


__all__ = ["check_pin", "restore_chain"]
