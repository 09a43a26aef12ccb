"""Webhooks only for channels this node reads (exchange.service.webhooks, "Scope"), on real nodes
over mutual TLS, SQLite and PostgreSQL: registration is refused for a channel the node is only
invited to, was removed from, or holds without the read right (403 problem+json from the API, one
`error:` line from the CLI, nothing stored or audited); a delivery pass announces nothing more
from a channel the node has stopped reading, and still serves the others.

Before, registration checked only that the channel existed, and delivery never asked whether the
node still read it. Found by a read-only review.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from exchange.errors import NotFound
from exchange.service.node import NodeService
from exchange.store import audit_log, bulletins
from tests.conftest import DEFAULT_NODES, Federation, MakeFederation, eventually, free_port
from tests.node.test_webhooks import Receiver
from tests.test_tamper_at_rest import run_cli

NL, KE = "nl-customs", "ke-customs"
BOTH = {NL: ["read", "post", "admin"], KE: ["read", "post"]}
# c2c: KE reads it throughout; c2p: its read right is taken away; c2x: it is removed; c2i: only invited
CHANNELS = [
    {"id": c, "owner": NL, "agencies": ["customs"], "members": members}
    for c, members in (("c2c", BOTH), ("c2p", BOTH), ("c2x", BOTH), ("c2i", {NL: ["read", "post", "admin"]}))
]
URL = "https://alerts.customs.example/exchange"


async def federation(make_federation: MakeFederation) -> Federation:
    return await make_federation(nodes={n: DEFAULT_NODES[n] for n in (NL, KE)}, channels=CHANNELS)


async def change(fed: Federation, channel: str, change: dict[str, Any]) -> None:
    """An owner's change at NL, and KE holding it."""
    await fed[NL].service.channels.change(None, channel, change)
    pos = fed[NL].service.channels.state(channel).pos

    async def held() -> bool:
        try:
            return fed[KE].service.channels.state(channel).pos >= pos
        except NotFound:  # an invitation: the channel is new to KE
            return False

    await eventually(held, 30, f"{KE} holding {change} of {channel}")


async def post(fed: Federation, channel: str, title: str) -> str:
    body = {"kind": "alert", "title": title}
    status, posted, _ = await fed[NL].api("POST", f"/api/v1/channels/{channel}/bulletins", body=body)
    assert status == 201, posted
    bid = str(posted["id"])

    async def arrived() -> bool:
        async with fed[KE].service.store.read() as conn:
            return await conn.scalar(sa.select(bulletins.c.id).where(bulletins.c.id == bid)) is not None

    await eventually(arrived, 30, f"{title} at {KE}")
    return bid


async def webhook_events(service: NodeService) -> list[dict[str, Any]]:
    async with service.store.read() as conn:
        rows = await conn.execute(sa.select(audit_log.c.entry).order_by(audit_log.c.idx))
        return [e for e in (json.loads(bytes(r.entry)) for r in rows) if e["event"].startswith("webhook.")]


async def test_registration_is_refused_for_a_channel_the_node_does_not_read(make_federation: MakeFederation) -> None:
    fed = await federation(make_federation)
    ke = fed[KE]
    await change(fed, "c2p", {"type": "set-rights", "node": KE, "rights": ["post"]})
    await change(fed, "c2x", {"type": "remove", "node": KE})
    await change(fed, "c2i", {"type": "invite", "node": KE, "rights": ["read", "post"]})
    assert ke.service.channels.state("c2i").invited  # KE knows the channel, as an invitee only

    for channel in ("c2p", "c2x", "c2i"):
        status, problem, ctype = await ke.api(
            "POST", f"/api/v1/channels/{channel}/webhooks", user="admin", body={"url": URL}
        )
        assert (status, ctype) == (403, "application/problem+json"), (channel, problem)
        assert f"this node does not read channel '{channel}'" in problem["detail"]
    code, out, err = await run_cli("webhooks", "add", "--node", str(fed.folder / f"{KE}.toml"), "c2x", URL)
    assert code == 1 and out == "", (code, out, err)
    assert err.startswith("error: ") and "this node does not read channel 'c2x'" in err and err.count("\n") == 1, err
    assert (await ke.api("GET", "/api/v1/webhooks", user="admin"))[1] == []
    assert await webhook_events(ke.service) == []

    status, answer, _ = await ke.api("POST", "/api/v1/channels/c2c/webhooks", user="admin", body={"url": URL})
    assert status == 201, answer  # a channel it reads


async def test_a_delivery_pass_announces_nothing_from_a_channel_the_node_no_longer_reads(
    make_federation: MakeFederation,
) -> None:
    """KE has webhooks for c2c and c2p and holds a new bulletin in each; its read right in c2p is
    then taken away. The next pass announces the c2c bulletin alone, and c2p's cursor stays."""
    fed = await federation(make_federation)
    ke = fed[KE]
    receiver = Receiver(free_port())
    await receiver.start()
    try:
        url = f"http://127.0.0.1:{receiver.port}/hook"
        hooks = {}
        for channel in ("c2c", "c2p"):
            path = f"/api/v1/channels/{channel}/webhooks"
            status, answer, _ = await ke.api("POST", path, user="admin", body={"url": url})
            assert status == 201, answer
            hooks[channel] = answer["webhook"]
        await ke.service.webhooks.close()  # passes only when this test asks for one
        in_c2p = await post(fed, "c2p", "posted while KE read c2p")
        await change(fed, "c2p", {"type": "set-rights", "node": KE, "rights": ["post"]})
        assert not ke.service.access.node_reads("c2p")
        in_c2c = await post(fed, "c2c", "in c2c")

        assert await ke.service.webhooks.deliver_due() == 1
        assert receiver.ids() == [in_c2c] and in_c2p not in receiver.ids()
        cursors = {w.channel: w.cursor for w in await ke.service.webhooks.list(await ke.service.users.get("admin"))}
        assert cursors["c2p"] == hooks["c2p"]["cursor"]
        # The administrator sees why c2p's webhook announces nothing, though nothing failed.
        status, listed, _ = await ke.api("GET", "/api/v1/webhooks", user="admin")
        assert status == 200, listed
        paused = {w["channel"]: w["paused"] for w in listed}
        assert paused["c2c"] is None and "no longer reads channel c2p" in paused["c2p"], paused
    finally:
        await receiver.stop()
