"""A node's roster chain read back from its database (exchange.service.federation): every stored
version checked against the one before it, the first against the node's v1 roster when it has one,
so that the database alone cannot make the node trust keys and pins no authority signed for; and
the chain must reach the version the node pinned outside it (`RosterPin`), so that the database
alone cannot take it back to an older chain, or to another one, either."""

from __future__ import annotations

import logging
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.errors import ExchangeError, InvalidInput, RosterRefused, StoredRosterInvalid
from exchange.keystore import RosterPin
from exchange.protocol.roster2_model import SignedRosterV2
from exchange.protocol.rosterchain import TrustedRoster, parse_roster_v2
from exchange.store.tables import roster_versions

log = logging.getLogger("exchange.roster")

First = Callable[[SignedRosterV2], TrustedRoster]  # how the first stored version is trusted


async def restore_chain(
    conn: AsyncConnection,
    held: TrustedRoster | None = None,
    *,
    first: First = TrustedRoster.restore,
    pin: RosterPin | None = None,
) -> TrustedRoster | None:
    """The highest stored version, reached from `held` (or from the first stored version, taken by
    `first`) by the chain's rules, one stored version after another (6a.4 rules 1 to 8; not expiry,
    nor the clock's rule, which were judged when each was taken). A hand-edited table cannot make
    the node run on a version of its own making: a row appended with a new authority signed by
    itself (the check of the top row alone took it, with every key and pin it lists) does not
    follow the version before it, nor does a row edited in place. With `pin`, the chain must reach
    the pinned version with the pinned hash, as computed from the stored versions' bytes."""
    pinned = pin.read() if pin is not None else None
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
            trusted = first(signed) if trusted is None else trusted.accept(signed)
        except (RosterRefused, InvalidInput) as exc:
            since = f", after version {trusted.version}" if trusted is not None else ""
            raise StoredRosterInvalid(
                f"the stored roster version {row.version} does not verify{since}: {exc.detail}"
            ) from exc
        if (trusted.version, trusted.hash) != (row.version, row.hash):
            raise StoredRosterInvalid(f"the stored roster version {row.version} is not the one its row names")
        if pin is not None and pinned is not None and trusted.version == pinned[0] and trusted.hash != pinned[1]:
            raise StoredRosterInvalid(
                f"the database's roster version {pinned[0]} is not the one this node took (hash {pinned[1]}, "
                f"{pin.path}): its chain was replaced; restore this node's database from its backup"
            )
    if pin is not None and pinned is not None and (trusted is None or trusted.version < pinned[0]):
        top = f"version {trusted.version}" if trusted is not None else "no version"
        raise StoredRosterInvalid(
            f"the database holds roster {top}, but this node took version {pinned[0]} ({pin.path}): restore "
            f"the database from a backup taken after version {pinned[0]}; or, if this database is the one "
            f"to trust, remove {pin.path} (the node then pins what it holds, and takes newer versions from "
            f"its partners or from `exchange roster import`; version {pinned[0]} has hash {pinned[1]})"
        )
    return trusted


def keep_pin(pin: RosterPin | None, held: TrustedRoster | None) -> None:
    """Pin `held` if it is later than the pin. A pin that cannot be written is logged, not raised:
    the version is stored and installed already, and the pin is a lower bound, written again with
    the next version or the next start."""
    if pin is None or held is None:
        return
    try:
        pin.write(held.version, held.hash)
    except (OSError, ExchangeError) as exc:
        log.error("the roster pin %s could not be written (version %d): %s", pin.path, held.version, exc)


__all__ = ["First", "keep_pin", "restore_chain"]
