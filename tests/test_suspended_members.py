"""A node the roster suspends leaves its channels (docs/protocol.md, 6a.7; docs/operations.md,
"Suspending and revoking a node"): the owner of each channel removes it, as it does a revoked one,
what is queued for it is cancelled and audited, and the other members go on posting, in v1 and in
v2 channels. A suspended node reinstated later is not a member again until its owners invite it.

Before, a suspended reader stayed a member, and posting failed in every channel it read (the author
found no active key for it: 403 UnknownPeer), and in a v2 channel the owner refused the other
members' epoch fetches. Tested on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import sqlalchemy as sa

from exchange.clock import timestamp
from exchange.protocol.roster2_model import RosterV2
from exchange.protocol.rostermigration import admit
from exchange.service.users import set_password
from exchange.store import outbox
from tests.conftest import Federation, MakeFederation, Member, console_session, eventually
from tests.test_epoch_attacks import NODES, V2, admin_invite_and_accept, arrives, channel, post, stored_wire
from tests.test_roster_gossip import CONVERGE, Authority, audited, import_at, runs_on

MEMBERS = ("nl-customs", "ke-customs", "de-customs")
PASSWORD = "a long passphrase for tests"


def removed(member: Member, node: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        state = member.service.channels.state("c2c")
        return node not in state.members and node not in state.invited

    return check


async def suspend_de(fed: Federation) -> tuple[Authority, RosterV2]:
    """Roster version 1 (the migration), then version 2 suspending de-customs, imported at the owner;
    returns the authority and version 1's document."""
    nl = fed["nl-customs"]
    auth = Authority.of(fed)
    version1 = auth.migration()
    await import_at(nl.config, version1)
    for member in fed.members.values():
        await eventually(runs_on(member, 1), timeout=CONVERGE, what=f"version 1 at {member.id}")
    await fed.stop("de-customs")  # it holds its queue at nl-customs while suspended
    return auth, version1.roster


async def test_a_suspended_reader_leaves_its_channels_and_the_others_post_on_v1(
    make_federation: MakeFederation,
) -> None:
    fed = await make_federation(nodes={n: NODES[n] for n in MEMBERS}, channels=[channel(*MEMBERS)])
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    auth, version1 = await suspend_de(fed)
    queued = await post(nl, "queued for de-customs, down")
    assert "de-customs" in queued["recipients"]
    await arrives(ke, queued["id"])

    suspended = admit(version1, timestamp(), version1.expires, statuses={"de-customs": "suspended"})
    await import_at(nl.config, auth.sign(suspended))
    for member in (nl, ke):
        await eventually(runs_on(member, 2), timeout=CONVERGE, what=f"version 2 at {member.id}")
        await eventually(removed(member, "de-customs"), timeout=CONVERGE, what=f"de-customs removed at {member.id}")

    # What was queued for it is cancelled, audited with the reason, and not retried; only the
    # channel's events stay queued for it (it learns of its removal if it is reactivated).
    async with nl.service.store.read() as conn:
        query = sa.select(outbox.c.kind).where(outbox.c.dest == "de-customs", outbox.c.state == "queued")
        assert set((await conn.execute(query)).scalars()) == {"event"}
    cancelled = [e for e in await audited(nl, "send.refused") if e["to"] == "de-customs"]
    assert queued["id"] in {e["ref"] for e in cancelled}, cancelled
    assert all(e["reason"] == "cancelled: suspended in roster version 2" for e in cancelled), cancelled

    # The others go on: a post reaches ke-customs and is not addressed to de-customs.
    after = await post(nl, "after the suspension")
    assert after["recipients"] == ["ke-customs"], after
    await arrives(ke, after["id"])
    by_ke = await post(ke, "from a member, after the suspension")
    await arrives(nl, by_ke["id"])


async def test_a_suspended_reader_leaves_a_v2_channel_and_is_invited_again_once_reinstated(
    make_federation: MakeFederation,
) -> None:
    fed = await make_federation(nodes={n: NODES[n] for n in MEMBERS}, channels=[channel(*MEMBERS)], options=V2)
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    first = await post(nl, "before the suspension")
    await arrives(ke, first["id"])
    by_de = await post(fed["de-customs"], "from de-customs, before its suspension")
    await arrives(nl, by_de["id"])
    before = nl.service.epochs.latest("c2c")
    assert before is not None and "de-customs" in before.readers
    auth, version1 = await suspend_de(fed)
    suspended = admit(version1, timestamp(), version1.expires, statuses={"de-customs": "suspended"})
    await import_at(nl.config, auth.sign(suspended))
    for member in (nl, ke):
        await eventually(runs_on(member, 2), timeout=CONVERGE, what=f"version 2 at {member.id}")
        await eventually(removed(member, "de-customs"), timeout=CONVERGE, what=f"de-customs removed at {member.id}")

    # What it posted before still opens, its signature checked again, its author named as gone
    # (before, a v2 bulletin of an author no longer active answered 403: found by a read-only review).
    status, body, _ = await nl.api("GET", f"/api/v1/bulletins/{by_de['id']}")
    assert status == 200, body
    assert body["bulletin"]["title"] == "from de-customs, before its suspension" and body["signature_verified"]
    assert body["author_name"].endswith("(no longer active)"), body
    # And in the console (it answered 403 after recording the open: found by a read-only review).
    await set_password(nl.service.store, "officer", PASSWORD, actor="test")
    async with console_session(nl, "officer", PASSWORD) as http, http.get(f"/console/bulletins/{by_de['id']}") as resp:
        page = await resp.text()
        assert resp.status == 200, page[-600:]
        assert "from de-customs, before its suspension" in page and "(no longer active)" in page

    # A member asks the owner for the channel's epochs: served, with a new epoch without de-customs.
    await ke.service.epochs.pull("nl-customs", "c2c")
    latest = ke.service.epochs.latest("c2c")
    assert latest is not None and latest.n > before.n and "de-customs" not in latest.readers
    assert ke.service.epochs.key("c2c", latest.n) is not None
    after = await post(ke, "after the suspension")
    assert "de-customs" not in after["recipients"]
    await arrives(nl, after["id"])

    # Reinstated (version 3), it is not a member again by itself; invited and accepting, it is,
    # and the next epoch wraps for it again.
    reinstated = admit(suspended, timestamp(), suspended.expires, statuses={"de-customs": "active"})
    await import_at(nl.config, auth.sign(reinstated))
    for member in (nl, ke):
        await eventually(runs_on(member, 3), timeout=CONVERGE, what=f"version 3 at {member.id}")
    await fed.start("de-customs")
    de = fed["de-customs"]
    await eventually(runs_on(de, 3), timeout=CONVERGE, what="version 3 at de-customs")
    assert "de-customs" not in nl.service.channels.state("c2c").members

    async def knows_it_was_removed() -> bool:  # the `remove` event stayed queued for it
        return "de-customs" not in de.service.channels.state("c2c").members

    await eventually(knows_it_was_removed, timeout=CONVERGE, what="de-customs told of its removal")
    await admin_invite_and_accept(nl, de)
    back = await post(nl, "welcome back")
    assert "de-customs" in back["recipients"], back
    await arrives(de, back["id"])
    assert await stored_wire(de, after["id"]) is None  # what was posted while it was out: not its
