"""Channels over real nodes and mutual TLS: who may do what, agency policy, unknown states, removal."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import sqlalchemy as sa

from exchange.audit.events import SEND_REFUSED
from exchange.errors import DecryptionFailed, Unavailable
from exchange.model import MAX_REFERENCES, Bulletin, NodeId
from exchange.protocol.channel import ChannelState
from exchange.protocol.envelope import bulletin_id, envelope_bytes, open_envelope, parse_envelope
from exchange.service.users import add_user
from exchange.store import audit_log, bulletins, channel_events, outbox
from tests.conftest import DEFAULT_NODES, Federation, MakeFederation, Member, authored, eventually

SIX = {
    **{k: DEFAULT_NODES[k] for k in ("nl-customs", "ke-customs", "gb-avsec", "wco-rilo")},
    "de-customs": ("DE", "customs"),
    "fr-customs": ("FR", "customs"),
}
C2C = {
    "id": "c2c",
    "owner": "nl-customs",
    "agencies": ["customs"],
    "members": {
        "nl-customs": ["read", "post", "admin"],
        "ke-customs": ["read", "post"],
        "de-customs": ["read"],
        "fr-customs": ["read", "post"],
    },
}
NOTE = {"kind": "alert", "title": "Cocaine in courier parcels via CDG", "body": "Routing pattern attached."}


async def count(member: Member, table: sa.Table) -> int:
    async with member.service.store.read() as conn:
        return int((await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one())


async def holds(member: Member, bid: str) -> bool:
    async with member.service.store.read() as conn:
        return (await conn.scalar(sa.select(bulletins.c.id).where(bulletins.c.id == bid))) is not None


async def invitation_at(member: Member, channel: str = "c2c") -> None:
    """Wait until `member` holds the log that names it invited to `channel`."""

    async def invited() -> bool:
        try:
            return NodeId(member.id) in member.service.channels.state(channel).invited
        except Exception:
            return False

    await eventually(invited, what=f"the invitation at {member.id}")


async def post(member: Member, channel: str = "c2c", **fields: Any) -> tuple[int, Any]:
    status, body, _ = await member.api("POST", f"/api/v1/channels/{channel}/bulletins", body={**NOTE, **fields})
    return status, body


# -- the access table -----------------------------------------------------------------------

ACTORS: dict[str, tuple[str, str]] = {
    # actor: (node, local user)
    "owner administrator": ("nl-customs", "admin"),
    "member poster": ("ke-customs", "officer"),
    "member reader": ("de-customs", "officer"),
    "non-member node": ("wco-rilo", "officer"),
    "excluded agency node": ("gb-avsec", "officer"),
    "removed node": ("fr-customs", "officer"),
    "local contact point": ("nl-customs", "officer"),
    "unassigned contact point": ("nl-customs", "clerk"),
    "local auditor": ("nl-customs", "auditor"),
    "unauthenticated caller": ("nl-customs", ""),
}
ACTIONS = ("post", "read", "list", "change membership", "read audit log")
ALLOW = {
    "owner administrator": {"change membership"},
    "member poster": {"post", "read", "list"},
    "member reader": {"read", "list"},
    "local contact point": {"post", "read", "list"},
    "local auditor": {"read audit log"},
}
TABLE = [(actor, action, action in ALLOW.get(actor, set())) for actor in ACTORS for action in ACTIONS]


@pytest.fixture
async def access_federation(make_federation: MakeFederation) -> tuple[Federation, str]:
    """Six nodes, one Customs channel; fr-customs removed; one bulletin posted after that."""
    fed = await make_federation(nodes=SIX, channels=[C2C])
    nl = fed["nl-customs"]
    await add_user(nl.service.store, "clerk", "contact-point")
    nl.tokens["clerk"] = await add_user(nl.service.store, "clerk2", "contact-point")  # clerk2 stands in, unassigned
    status, _, _ = await nl.api("POST", "/api/v1/channels/c2c/remove", user="admin", body={"node": "fr-customs"})
    assert status == 200
    removal: int = nl.service.channels.state("c2c").pos
    for node in ("ke-customs", "de-customs", "fr-customs"):

        async def knows(node: str = node) -> bool:
            state: ChannelState = fed[node].service.channels.state("c2c")
            return state.pos >= removal

        await eventually(knows, what=f"{node} to learn of the removal")
    status, posted = await post(fed["ke-customs"])
    assert status == 201, posted
    for node in ("nl-customs", "de-customs"):

        async def arrived(node: str = node) -> bool:
            return await holds(fed[node], posted["id"])

        await eventually(arrived, what=f"the bulletin at {node}")
    return fed, posted["id"]


async def act(member: Member, user: str, action: str, bid: str) -> tuple[int, Any, str]:
    if action == "post":
        return await member.api("POST", "/api/v1/channels/c2c/bulletins", user=user, body=NOTE)
    if action == "read":
        return await member.api("GET", f"/api/v1/bulletins/{bid}", user=user)
    if action == "list":
        return await member.api("GET", "/api/v1/bulletins?channel=c2c", user=user)
    if action == "change membership":
        return await member.api(
            "POST", "/api/v1/channels/c2c/rights", user=user, body={"node": "de-customs", "rights": ["read"]}
        )
    return await member.api("GET", "/api/v1/audit/entries", user=user)


async def check_row(fed: Federation, bid: str, actor: str, action: str, allowed: bool) -> str | None:
    """Run one row of the table; return what went wrong, or None."""
    node, user = ACTORS[actor]
    member, owner = fed[node], fed["nl-customs"]
    before = [await count(m, t) for m in (member, owner) for t in (bulletins, channel_events)]
    audit_before = await count(member, audit_log)
    status, body, ctype = await act(member, user, action, bid)
    if allowed:
        if not 200 <= status < 300:
            return f"expected allow, got {status} {body}"
        if action == "read" and body["bulletin"]["title"] != NOTE["title"]:
            return "read the wrong bulletin"
        if action == "list" and bid not in [i["id"] for i in body["items"]]:
            return "the bulletin is missing from the list"
        # The rows after it count the members' bulletins and channel events: not while this one arrives.
        if action == "change membership":
            await _members_at(fed, owner.service.channels.state("c2c").pos)
        if action == "post":
            for other in sorted({"nl-customs", "ke-customs", "de-customs"} - {node}):
                await eventually(_holding(fed[other], body["id"]), what=f"the post at {other}")
        return None
    if not 400 <= status < 500 or ctype != "application/problem+json" or body.get("status") != status:
        return f"expected a 4xx problem+json, got {status} {ctype} {body}"
    if actor == "unauthenticated caller" and status != 401:
        return f"expected 401, got {status}"
    after = [await count(m, t) for m in (member, owner) for t in (bulletins, channel_events)]
    if after != before:
        return f"a refused request stored something: {before} -> {after}"
    # Among the entries written since the request (the node's background work, an audit round or a
    # catch-up, may write others after it on a slow machine), the refusal with its status.
    added = await count(member, audit_log) - audit_before
    async with member.service.store.read() as conn:
        rows = await conn.execute(sa.select(audit_log.c.entry).order_by(audit_log.c.idx.desc()).limit(max(added, 0)))
        since = [json.loads(entry) for entry in rows.scalars()]
    if not any(e["event"] == "request.rejected" and e["status"] == status for e in since):
        return "the refusal was not audited"
    return None


def _holding(member: Member, bid: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await holds(member, bid)

    return check


async def _members_at(fed: Federation, pos: int) -> None:
    """Wait until the channel's other members hold its log up to `pos` (a change pushed to them)."""
    for node in ("ke-customs", "de-customs"):

        async def holds_it(node: str = node) -> bool:
            return bool(fed[node].service.channels.state("c2c").pos >= pos)

        await eventually(holds_it, what=f"{node} to hold the channel's log up to {pos}")


async def test_access_table(access_federation: tuple[Federation, str]) -> None:
    """Every actor x action pair against one federation: allowed ones succeed, the rest are refused,
    with problem+json, nothing stored, and the refusal audited."""
    fed, bid = access_federation
    failures = {}
    for actor, action, allowed in TABLE:
        problem = await check_row(fed, bid, actor, action, allowed)
        if problem:
            failures[f"{actor} / {action}"] = problem
    assert failures == {}


def test_access_table_covers_every_actor_and_action() -> None:
    assert len(TABLE) == len(ACTORS) * len(ACTIONS) == 50
    assert sum(allowed for *_, allowed in TABLE) == 10


# -- receiver-side enforcement --------------------------------------------------------------


def forged(member: Member, state_of: Member, channel: str = "c2c", seq: int = 1) -> bytes:
    """An envelope `member` signs itself, citing the channel state `state_of` holds."""
    bulletin = Bulletin.model_validate({**NOTE, "handling": {"tlp": "AMBER"}})
    env = authored(member, bulletin, channel, seq, state_of=state_of)
    return b'{"txn":"x","envelopes":[' + envelope_bytes(env) + b"]}"


async def test_receivers_refuse_what_the_channel_does_not_allow(make_federation: MakeFederation) -> None:
    fed = await make_federation(nodes=SIX, channels=[C2C])
    nl, ke, de, fr, gb = (fed[n] for n in ("nl-customs", "ke-customs", "de-customs", "fr-customs", "gb-avsec"))
    # A read-only member signs a bulletin anyway.
    status, body, _ = await nl.fed_post(de, forged(de, de))
    assert status == 422 and "post right" in body["detail"]
    # An aviation node outside a Customs-only channel.
    status, body, _ = await nl.fed_post(gb, forged(gb, nl))
    assert status == 422
    # A removed member citing the state from before its removal.
    stale = forged(fr, fr)
    await nl.api("POST", "/api/v1/channels/c2c/remove", user="admin", body={"node": "fr-customs"})

    async def ke_knows() -> bool:
        return "fr-customs" not in ke.service.channels.state("c2c").members

    await eventually(ke_knows, what="ke to learn of the removal")
    status, body, _ = await ke.fed_post(fr, stale)
    assert status == 422 and "no longer" in body["detail"]
    assert [await count(m, bulletins) for m in (nl, ke)] == [0, 0]


async def test_unknown_state_is_fetched_from_the_owner_or_refused(make_federation: MakeFederation) -> None:
    three = {k: DEFAULT_NODES[k] for k in ("nl-customs", "ke-customs", "wco-rilo")}
    channel = {
        "id": "ops",
        "owner": "wco-rilo",
        "agencies": ["customs", "international"],
        "members": {
            "wco-rilo": ["read", "post", "admin"],
            "nl-customs": ["read", "post"],
            "ke-customs": ["read", "post"],
        },
    }
    fed = await make_federation(nodes=three, channels=[channel])
    nl, ke, owner = fed["nl-customs"], fed["ke-customs"], fed["wco-rilo"]
    # ke is away while the owner changes the channel, then the owner goes away too.
    await fed.stop("ke-customs")
    status, _, _ = await owner.api(
        "POST", "/api/v1/channels/ops/rights", user="admin", body={"node": "ke-customs", "rights": ["read", "post"]}
    )
    assert status == 200

    async def nl_knows() -> bool:
        here: ChannelState = nl.service.channels.state("ops")
        there: ChannelState = owner.service.channels.state("ops")
        return here.pos == there.pos

    await eventually(nl_knows, what="nl to learn the new state")
    await fed.stop("wco-rilo")
    await fed.start("ke-customs")
    ke = fed["ke-customs"]
    status, body, ctype = await ke.fed_post(nl, forged(nl, nl, channel="ops"))
    assert status == 503 and ctype == "application/problem+json", body
    assert await count(ke, bulletins) == 0
    # With the owner back, the same envelope is fetched, verified and stored.
    await fed.start("wco-rilo")
    status, body, _ = await ke.fed_post(nl, forged(nl, nl, channel="ops"))
    assert status == 200, body
    assert await count(ke, bulletins) == 1
    # A state its owner never had is refused for good (422), not retried.
    doc = json.loads(forged(nl, nl, channel="ops", seq=2))
    doc["envelopes"][0]["header"]["state"]["pos"] = 99
    status, body, _ = await ke.fed_post(nl, json.dumps(doc).encode())
    assert status == 422


# -- agency policy in the sample federation's shape -----------------------------------------

SAMPLE_CHANNELS = [
    {
        "id": "c2c-cargo-fraud",
        "owner": "nl-customs",
        "agencies": ["customs"],
        "members": {"nl-customs": ["read", "post", "admin"], "ke-customs": ["read", "post"]},
    },
    {
        "id": "c2a-air-cargo-security",
        "owner": "nl-customs",
        "agencies": ["customs", "aviation-security", "international"],
        "members": {
            "nl-customs": ["read", "post", "admin"],
            "ke-customs": ["read", "post"],
            "gb-avsec": ["read", "post"],
            "wco-rilo": ["read", "post"],
        },
    },
]


async def test_aviation_node_cannot_join_customs_only_channel_but_works_in_the_joint_one(
    make_federation: MakeFederation,
) -> None:
    fed = await make_federation(nodes=dict(DEFAULT_NODES), channels=SAMPLE_CHANNELS)
    nl, gb = fed["nl-customs"], fed["gb-avsec"]
    events_before = await count(nl, channel_events)
    status, body, ctype = await nl.api(
        "POST", "/api/v1/channels/c2c-cargo-fraud/invite", user="admin", body={"node": "gb-avsec", "rights": ["read"]}
    )
    assert status == 422 and ctype == "application/problem+json" and "excludes" in body["detail"]
    assert await count(nl, channel_events) == events_before
    # In the Customs + aviation channel, both directions work.
    status, posted = await post(gb, "c2a-air-cargo-security", title="Suspicious IED-like item at LHR screening")
    assert status == 201, posted
    assert set(posted["recipients"]) == {"nl-customs", "ke-customs", "wco-rilo"}

    async def at_nl() -> bool:
        return await holds(nl, posted["id"])

    await eventually(at_nl, what="the aviation bulletin at nl-customs")
    status, shown, _ = await nl.api("GET", f"/api/v1/bulletins/{posted['id']}")
    assert status == 200 and shown["author"] == "gb-avsec"
    status, posted = await post(nl, "c2a-air-cargo-security", title="Customs warning for aviation")
    assert status == 201

    async def at_gb() -> bool:
        return await holds(gb, posted["id"])

    await eventually(at_gb, what="the customs bulletin at gb-avsec")
    assert (await gb.api("GET", f"/api/v1/bulletins/{posted['id']}"))[0] == 200


# -- joining and removing through the API ---------------------------------------------------


async def test_invite_accept_and_no_earlier_bulletins_for_a_new_member(make_federation: MakeFederation) -> None:
    three = {k: DEFAULT_NODES[k] for k in ("nl-customs", "ke-customs")} | {"de-customs": ("DE", "customs")}
    fed = await make_federation(
        nodes=three,
        channels=[
            {
                "id": "c2c",
                "owner": "nl-customs",
                "agencies": ["customs"],
                "members": {"nl-customs": ["read", "post", "admin"], "ke-customs": ["read", "post"]},
            }
        ],
    )
    nl, de = fed["nl-customs"], fed["de-customs"]
    status, early = await post(nl)
    assert status == 201
    status, body, _ = await nl.api(
        "POST", "/api/v1/channels/c2c/invite", user="admin", body={"node": "de-customs", "rights": ["read", "post"]}
    )
    assert status == 200 and body["invited"] == {"de-customs": ["post", "read"]}
    await invitation_at(de)
    status, body, _ = await de.api("POST", "/api/v1/channels/c2c/accept", user="admin")
    assert status == 200 and "de-customs" in body["members"], body
    await de.api("POST", "/api/v1/channels/c2c/users", user="admin", body={"user": "officer"})
    status, late = await post(nl)
    assert status == 201 and "de-customs" in late["recipients"]

    async def late_at_de() -> bool:
        return await holds(de, late["id"])

    await eventually(late_at_de, what="the later bulletin at de-customs")
    assert not await holds(de, early["id"])
    status, _, _ = await de.api("GET", f"/api/v1/bulletins/{early['id']}")
    assert status == 404
    # The owner records an explicit, audited history grant.
    status, body, _ = await nl.api(
        "POST", "/api/v1/channels/c2c/grant-history", user="admin", body={"node": "de-customs"}
    )
    assert status == 200 and body["history_grants"] == ["de-customs"]
    status, entries, _ = await nl.api("GET", "/api/v1/audit/entries", user="auditor")
    grants = [
        e for e in entries["entries"] if e["event"] == "channel.changed" and e["change"]["type"] == "grant-history"
    ]
    assert grants and grants[0]["change"]["node"] == "de-customs"


async def test_handling_forbids_forwarding_red_strict_and_no_onward(make_federation: MakeFederation) -> None:
    fed = await make_federation(
        channels=[
            {
                "id": "c2c",
                "owner": "nl-customs",
                "agencies": ["customs"],
                "members": {"nl-customs": ["read", "post", "admin"], "ke-customs": ["read", "post"]},
            },
            {
                "id": "other",
                "owner": "nl-customs",
                "agencies": ["customs"],
                "members": {"nl-customs": ["read", "post", "admin"], "ke-customs": ["read", "post"]},
            },
        ]
    )
    nl = fed["nl-customs"]
    cases = {"RED": False, "AMBER+STRICT": False, "AMBER": True, "GREEN": True}
    for tlp, allowed in cases.items():
        status, posted = await post(nl, handling={"tlp": tlp, "no_onward_sharing": False})
        assert status == 201
        status, body, ctype = await nl.api(
            "POST", f"/api/v1/bulletins/{posted['id']}/forward", body={"channel": "other"}
        )
        assert (status == 201) == allowed, (tlp, status, body)
        if not allowed:
            assert status == 403 and ctype == "application/problem+json"
    status, posted = await post(nl, handling={"tlp": "GREEN", "no_onward_sharing": True})
    status, body, _ = await nl.api("POST", f"/api/v1/bulletins/{posted['id']}/forward", body={"channel": "other"})
    assert status == 403 and "no-onward-sharing" in body["detail"]
    status, listed, _ = await nl.api("GET", "/api/v1/bulletins?channel=other")
    assert len(listed["items"]) == 2  # only the AMBER and GREEN forwards


async def test_a_contact_point_cannot_forward_into_or_export_from_a_channel_it_is_not_assigned_to(
    make_federation: MakeFederation,
) -> None:
    """A contact point works only in the channels assigned to it: assigned to c2c alone, it cannot
    forward a c2c bulletin into `other`, nor read `other`'s STIX export or RFI board, though its
    node reads and posts there; nothing is stored (tests for the refusals a review found missing)."""
    both = {"nl-customs": ["read", "post", "admin"], "ke-customs": ["read", "post"]}
    channels = [{"id": c, "owner": "nl-customs", "agencies": ["customs"], "members": both} for c in ("c2c", "other")]
    fed = await make_federation(channels=channels)
    nl = fed["nl-customs"]
    nl.tokens["clerk"] = await add_user(nl.service.store, "clerk", "contact-point")
    status, body, _ = await nl.api("POST", "/api/v1/channels/c2c/users", user="admin", body={"user": "clerk"})
    assert status == 200, body
    status, posted = await post(nl, handling={"tlp": "GREEN", "no_onward_sharing": False})
    assert status == 201, posted

    async def held() -> int:
        async with nl.service.store.read() as conn:
            return int(await conn.scalar(sa.select(sa.func.count()).select_from(bulletins)) or 0)

    before = await held()
    refused = [  # the export says only that there is no channel it may export (as for one that does not exist)
        ("POST", f"/api/v1/bulletins/{posted['id']}/forward", {"channel": "other"}, 403),
        ("GET", "/api/v1/channels/other/stix", None, 404),
        ("GET", "/api/v1/channels/other/rfis", None, 403),
    ]
    for method, path, body, expected in refused:
        status, problem, ctype = await nl.api(method, path, user="clerk", body=body)
        assert (status, ctype) == (expected, "application/problem+json"), (path, status, problem)
    assert await held() == before
    # The same requests in its own channel, and the forward by a user assigned to both, go through.
    assert (await nl.api("GET", "/api/v1/channels/c2c/rfis", user="clerk"))[0] == 200
    assert (await nl.api("GET", "/api/v1/channels/c2c/stix", user="clerk"))[0] == 200
    forwarded = await nl.api("POST", f"/api/v1/bulletins/{posted['id']}/forward", body={"channel": "other"})
    assert forwarded[0] == 201, forwarded[1]


async def test_forwarding_a_bulletin_that_holds_the_most_references_is_refused(make_federation: MakeFederation) -> None:
    """The copy names the original too: one reference past the most a bulletin holds is a 422
    that says so, and nothing is stored (it was a 500)."""
    fed = await make_federation()
    nl = fed["nl-customs"]
    refs = sorted(hashlib.sha256(str(i).encode()).hexdigest() for i in range(MAX_REFERENCES))
    status, posted = await post(nl, references=refs)
    assert status == 201, posted
    status, problem, ctype = await nl.api("POST", f"/api/v1/bulletins/{posted['id']}/forward", body={"channel": "c2c"})
    assert (status, ctype) == (422, "application/problem+json"), problem
    assert "cannot be forwarded" in problem["detail"] and "references" in problem["detail"]
    async with nl.service.store.read() as conn:
        assert (await conn.execute(sa.select(sa.func.count()).select_from(bulletins))).scalar_one() == 1


# -- removal under load ---------------------------------------------------------------------


async def test_removed_member_gets_nothing_posted_after_its_removal_under_load(
    make_federation: MakeFederation,
) -> None:
    nodes = {k: DEFAULT_NODES[k] for k in ("nl-customs", "ke-customs")} | {"fr-customs": ("FR", "customs")}
    fed = await make_federation(
        nodes=nodes,
        channels=[
            {
                "id": "c2c",
                "owner": "nl-customs",
                "agencies": ["customs"],
                "members": {
                    "nl-customs": ["read", "post", "admin"],
                    "ke-customs": ["read", "post"],
                    "fr-customs": ["read", "post"],
                },
            }
        ],
    )
    nl, ke, fr = fed["nl-customs"], fed["ke-customs"], fed["fr-customs"]
    removal_pos: int | None = None
    after_removal: list[str] = []
    stop = asyncio.Event()

    async def flow(member: Member) -> int:
        sent = 0
        while not stop.is_set():
            knew = removal_pos is not None and member.service.channels.state("c2c").pos >= removal_pos
            status, body = await post(member, title=f"load {member.id} {sent}")
            assert status == 201, body
            if knew:
                after_removal.append(body["id"])
            sent += 1
        return sent

    flows = [asyncio.create_task(flow(m)) for m in (nl, ke)]

    async def some_traffic() -> bool:
        return await count(fr, bulletins) >= 20

    await eventually(some_traffic, what="traffic to reach fr-customs before the removal")
    status, body, _ = await nl.api("POST", "/api/v1/channels/c2c/remove", user="admin", body={"node": "fr-customs"})
    assert status == 200
    removal_pos = body["pos"]

    async def enough_after() -> bool:
        return len(after_removal) >= 40

    await eventually(enough_after, timeout=30, what="posts after the removal")
    stop.set()
    totals = await asyncio.gather(*flows)

    async def drained() -> bool:
        queued = [await m.service.queued_counts() for m in (nl, ke)]
        return not any(q.get("ke-customs") or q.get("nl-customs") for q in queued)

    await eventually(drained, timeout=30, what="delivery between the remaining members")
    async with nl.service.store.read() as conn:
        rows = (await conn.execute(sa.select(bulletins.c.id, bulletins.c.state_pos, bulletins.c.envelope))).all()
    late = [r for r in rows if r.state_pos >= removal_pos]
    assert {r.id for r in late} >= set(after_removal)
    for r in late:
        env = parse_envelope(bytes(r.envelope))
        assert "fr-customs" not in [x.node for x in env.header.recipients]
        assert not await holds(fr, r.id)
        with pytest.raises(DecryptionFailed):
            open_envelope(env, bulletin_id(env.header), NodeId("fr-customs"), fr.service.keys.decryption)
    async with fr.service.store.read() as conn:
        at_fr = (await conn.execute(sa.select(sa.func.max(bulletins.c.state_pos)))).scalar_one()
    assert at_fr is not None and at_fr < removal_pos
    print(
        f"\nremoval under load: {sum(totals)} posted, {len(late)} after the removal, "
        f"{await count(fr, bulletins)} held by the removed node (all from before)"
    )


async def test_a_removed_node_can_be_invited_again_and_rejoin(make_federation: MakeFederation) -> None:
    nodes = {k: DEFAULT_NODES[k] for k in ("nl-customs", "ke-customs")}
    fed = await make_federation(nodes=nodes)
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    for action, body in [("remove", {"node": "ke-customs"}), ("invite", {"node": "ke-customs", "rights": ["read"]})]:
        status, shown, _ = await nl.api("POST", f"/api/v1/channels/c2c/{action}", user="admin", body=body)
        assert status == 200, shown

    async def invited_again() -> bool:
        return NodeId("ke-customs") in ke.service.channels.state("c2c").invited

    await eventually(invited_again, what="the second invitation at ke-customs")
    status, shown, _ = await ke.api("POST", "/api/v1/channels/c2c/accept", user="admin")
    assert status == 200 and shown["members"]["ke-customs"] == ["read"], shown


async def test_nothing_can_be_posted_to_a_closed_channel(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    status, shown, _ = await nl.api("POST", "/api/v1/channels/c2c/close", user="admin")
    assert status == 200 and shown["closed"] is True

    async def ke_knows() -> bool:
        state: ChannelState = ke.service.channels.state("c2c")
        return state.closed

    await eventually(ke_knows, what="ke to learn the channel is closed")
    for member in (nl, ke):
        status, problem = await post(member)
        assert status == 403 and "closed" in problem["detail"], problem
        assert await count(member, bulletins) == 0
    status, problem, _ = await nl.api(
        "POST", "/api/v1/channels/c2c/invite", user="admin", body={"node": "ke-customs", "rights": ["read"]}
    )
    assert status == 422 and "closed" in problem["detail"]


def busy_once(monkeypatch: pytest.MonkeyPatch, target: object, method: str) -> list[Unavailable]:
    """Have `target.method` fail once as a busy database does; the list empties when it has."""
    real = getattr(target, method)
    busy = [Unavailable("the database is busy; try again shortly")]

    async def once(*args: Any, **kwargs: Any) -> Any:
        if busy:
            raise busy.pop()
        return await real(*args, **kwargs)

    monkeypatch.setattr(target, method, once)
    return busy


async def outbox_states(member: Member, dest: str) -> set[str]:
    async with member.service.store.read() as conn:
        return set((await conn.scalars(sa.select(outbox.c.state).where(outbox.c.dest == dest))).all())


async def test_an_event_arriving_while_the_store_is_busy_is_retried_not_rejected(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A receiver whose database is busy (Unavailable) when channel events arrive answers 503,
    which the owner's sender retries; before, it answered 422 like a bad event, the owner dropped
    the invitation for good ('rejected') and the invited node never learnt of it."""
    three = {k: DEFAULT_NODES[k] for k in ("nl-customs", "ke-customs")} | {"de-customs": ("DE", "customs")}
    members = {"nl-customs": ["read", "post", "admin"], "ke-customs": ["read", "post"]}
    fed = await make_federation(nodes=three, channels=[{**C2C, "members": members}])
    nl, de = fed["nl-customs"], fed["de-customs"]
    busy = busy_once(monkeypatch, de.service.channels, "import_events")
    status, body, _ = await nl.api(
        "POST", "/api/v1/channels/c2c/invite", user="admin", body={"node": "de-customs", "rights": ["read"]}
    )
    assert status == 200, body
    await invitation_at(de)
    assert not busy  # it was busy once, and the sender came back
    states = await outbox_states(nl, "de-customs")
    _, entries, _ = await nl.api("GET", "/api/v1/audit/entries", user="auditor")
    refused = [e for e in entries["entries"] if e["event"] == SEND_REFUSED]
    assert "rejected" not in states and not refused, (states, refused)


async def test_a_bulletin_arriving_while_the_store_is_busy_is_retried_not_rejected(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for an envelope: a receiver that cannot check it against the channel's state
    because its database is busy answers 503 and stores it when the sender comes back, rather
    than refusing it (422) and the author giving it up for that reader."""
    fed = await make_federation(nodes={k: DEFAULT_NODES[k] for k in ("nl-customs", "ke-customs")})
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    busy = busy_once(monkeypatch, ke.service.channels, "ensure")
    status, posted = await post(nl)
    assert status == 201, posted

    async def arrived() -> bool:
        return await holds(ke, posted["id"])

    await eventually(arrived, what="the bulletin at ke-customs")
    assert not busy
    states = await outbox_states(nl, "ke-customs")
    assert "rejected" not in states, states


async def test_a_member_with_the_admin_right_changes_nothing_while_the_owner_is_not_revoked(
    make_federation: MakeFederation,
) -> None:
    """`admin` makes a member the owner's possible successor (docs/protocol.md 7.5) and gives its
    node no power over the channel: its administrator's invite, set-rights and remove are refused
    with 403 naming the owner, nothing stored at either node, and each refusal audited."""
    nodes = {k: SIX[k] for k in ("nl-customs", "ke-customs", "de-customs")}
    channel = {**C2C, "members": {"nl-customs": ["read", "post", "admin"], "ke-customs": ["read", "post", "admin"]}}
    fed = await make_federation(nodes=nodes, channels=[channel])
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    assert ke.service.channels.state("c2c").members[NodeId("ke-customs")] == {"read", "post", "admin"}
    pos = nl.service.channels.state("c2c").pos
    changes = [
        ("invite", {"node": "de-customs", "rights": ["read"]}),
        ("rights", {"node": "nl-customs", "rights": ["read"]}),
        ("remove", {"node": "nl-customs"}),
    ]
    for action, body in changes:
        before = [await count(m, t) for m in (ke, nl) for t in (bulletins, channel_events)]
        audited = await count(ke, audit_log)
        status, problem, ctype = await ke.api("POST", f"/api/v1/channels/c2c/{action}", user="admin", body=body)
        assert (status, ctype) == (403, "application/problem+json"), (action, problem)
        assert "nl-customs" in problem["detail"], problem
        assert [await count(m, t) for m in (ke, nl) for t in (bulletins, channel_events)] == before
        async with ke.service.store.read() as conn:
            rows = await conn.execute(sa.select(audit_log.c.entry).where(audit_log.c.idx >= audited))
            assert any(
                (e := json.loads(raw))["event"] == "request.rejected" and e["status"] == 403 for raw in rows.scalars()
            ), action
    assert ke.service.channels.state("c2c").pos == nl.service.channels.state("c2c").pos == pos


async def test_a_forged_event_past_a_gap_is_refused_before_its_owner_is_asked_for_the_log(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event past a gap had the receiver fetch the missing part of the log from the owner it
    names before its signature was checked: a partner pushing forged events made this node fetch
    whole logs from third parties, up to a thousand a transaction (found by a read-only review).
    The signature is now checked first."""
    fed = await make_federation(nodes=SIX, channels=[C2C])
    nl, ke, de = fed["nl-customs"], fed["ke-customs"], fed["de-customs"]
    async with nl.service.store.read() as conn:
        top = (await conn.execute(sa.select(channel_events.c.event).order_by(channel_events.c.pos.desc()))).first()
    assert top is not None
    event = json.loads(top.event)
    held_events = await count(de, channel_events)
    asked: list[str] = []
    real_fetch = de.service.channels.transport.fetch

    async def fetch(node: NodeId, path: str) -> Any:
        asked.append(f"{node} {path}")
        return await real_fetch(node, path)

    monkeypatch.setattr(de.service.channels.transport, "fetch", fetch)
    forged_event = {**event, "pos": event["pos"] + 5, "signature": "A" * len(event["signature"])}
    body = json.dumps({"txn": "y", "events": [forged_event], "envelopes": []}).encode()
    status, answer, ctype = await de.fed_post(ke, body)
    assert status == 422 and ctype == "application/problem+json", answer
    assert asked == []  # before: the log fetched from nl-customs first
    assert await count(de, channel_events) == held_events
