"""Roster versions spread by gossip and are installed live, on real nodes over mutual TLS, on SQLite
and PostgreSQL (docs/protocol.md, 6a.11; docs/operations.md, "What changes live").

- A version imported at ONE node of three reaches the other two within a bounded time, and each
  runs on it without a restart.
- A newcomer that only the next version lists offers it on its first contact; every node takes it
  and trusts the newcomer at once (TLS pins, sessions, senders), which then exchanges bulletins.
- A forged or older chain offered by a peer changes nothing, and is audited.
- A node whose roster has expired refuses posts and federation traffic (503 HeldRosterExpired);
  a fresh version imported at one node resumes delivery with nothing lost.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from exchange.app import local_roster
from exchange.cli.main import cli
from exchange.clock import timestamp, utc_now
from exchange.config import NodeConfig
from exchange.crypto import SigningKey, b64d
from exchange.errors import HeldRosterExpired
from exchange.keystore import NodeKeyFiles, read_file
from exchange.model import NodeId, SignedRoster
from exchange.node.tls import client_context
from exchange.protocol.roster2_model import RosterV2, SignedRosterV2
from exchange.protocol.rosterchain import combine, roster_hash, sign_roster_v2
from exchange.protocol.rostermigration import admit, authority, from_v1, propose, sign_join_request
from exchange.provision import InitReport, sample_users
from exchange.service.gossip import ROSTER_PATH, RosterGossip
from exchange.service.users import set_password
from exchange.store import audit_log, bulletins
from tests.conftest import (
    DEFAULT_NODES,
    Federation,
    MakeFederation,
    Member,
    console_session,
    eventually,
    free_port,
)
from tests.node.test_metrics import samples, scrape

NOTE = {"kind": "alert", "title": "Undeclared lithium batteries", "body": "AWB 176-12345675"}
THREE = {k: DEFAULT_NODES[k] for k in ("nl-customs", "ke-customs", "gb-avsec")}
PASSWORD = "correct horse battery staple"  # a console password (12 characters or more)
CONVERGE = 30.0  # seconds: the bound within which every node holds the version


@dataclass
class Authority:
    """A 2-of-3 authority and the v1 authority key of a test federation."""

    holders: list[SigningKey]
    v1_key: SigningKey
    signed_v1: SignedRoster

    @classmethod
    def of(cls, fed: Federation) -> Authority:
        member = next(iter(fed.members.values()))
        keys = member.config.roster_path.parent
        v1_key = SigningKey(b64d(read_file(keys / "federation" / "authority.key").decode().strip()))
        signed = SignedRoster.model_validate(json.loads(member.config.roster_path.read_text()))
        return cls([SigningKey.generate() for _ in range(3)], v1_key, signed)

    def migration(self, expires: dt.timedelta = dt.timedelta(days=365)) -> SignedRosterV2:
        holders = authority([(f"holder {i}", k.verify_key) for i, k in enumerate(self.holders)], 2)
        now = utc_now()
        doc = from_v1(self.signed_v1, self.v1_key.verify_key, holders, timestamp(now), timestamp(now + expires))
        return combine(doc, [sign_roster_v2(doc, k) for k in (self.holders[0], self.holders[1], self.v1_key)])

    def sign(self, doc: RosterV2, count: int = 2) -> SignedRosterV2:
        return combine(doc, [sign_roster_v2(doc, k) for k in self.holders[:count]])


def blob(*versions: SignedRosterV2) -> list[bytes]:
    return [json.dumps(v.model_dump(mode="json")).encode() for v in versions]


async def import_at(config: NodeConfig, *versions: SignedRosterV2) -> int:
    """`exchange roster import` beside the running node, into its database."""
    async with local_roster(config, create=True) as roster:
        return (await roster.import_chain(blob(*versions))).version


async def holds(member: Member, bid: str) -> bool:
    async with member.service.store.read() as conn:
        return (await conn.scalar(sa.select(bulletins.c.id).where(bulletins.c.id == bid))) is not None


async def audited(member: Member, event: str) -> list[dict[str, Any]]:
    async with member.service.store.read() as conn:
        rows = await conn.execute(sa.select(audit_log.c.entry))
        entries = [json.loads(r.entry) for r in rows]
    return [e for e in entries if e.get("event") == event]


def runs_on(member: Member, version: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        held = member.service.roster.held
        return held is not None and held.version == version and member.service.fed.roster.version == version

    return check


async def post(member: Member, channel: str = "c2c", **fields: Any) -> tuple[int, Any]:
    status, body, _ = await member.api("POST", f"/api/v1/channels/{channel}/bulletins", body={**NOTE, **fields})
    return status, body


async def offer(member: Member, body: bytes) -> tuple[int, Any]:
    """POST roster versions to a node's offer route without a client certificate."""
    ctx = client_context(read_file(member.config.keys_dir / "tls.crt").decode())
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.post(member.config.endpoint + "/fed/v1/roster", data=body) as resp,
    ):
        return resp.status, json.loads(await resp.read())


async def offer_when_allowed(member: Member, body: bytes) -> tuple[int, Any]:
    """Offer, and again after the Retry-After the node names while it answers 429 (with a deadline)."""
    deadline = asyncio.get_running_loop().time() + CONVERGE
    while True:
        status, answer = await offer(member, body)
        if status != 429 or asyncio.get_running_loop().time() > deadline:
            return status, answer
        await asyncio.sleep(1.0)


async def newcomer(tmp_path: Path, fed: Federation, url: str | None) -> tuple[NodeConfig, Any]:
    """za-customs: its own node file, no v1 roster, its keys made on its host, its join request."""
    (fed.folder / "za-customs.toml").write_text(
        '[node]\nid = "za-customs"\nname = "Test za-customs"\ncountry = "ZA"\nagency = "customs"\n'
        f'port = {free_port()}\nroster_path = "{tmp_path / "no-v1-roster.json"}"\n'
        + (f'database_url = "{url}"\n' if url else "")
        + "retry_base_seconds = 0.05\nretry_max_seconds = 0.5\nrequest_timeout_seconds = 5\ncrypto_workers = 0\n"
    )
    cfg = NodeConfig.load(fed.folder / "za-customs.toml", environ={})
    files = NodeKeyFiles(cfg.keys_dir)
    made = files.generate("za-customs")
    details = {"federation": "test federation", "id": "za-customs", "name": "Test za-customs", "country": "ZA"}
    details |= {"agency": "customs", "endpoint": cfg.endpoint}
    return cfg, sign_join_request(details, timestamp(), made.signing, made.decryption.public, read_file(files.tls_cert))


async def test_a_version_imported_at_one_node_reaches_all_and_a_newcomer_joins_live(
    tmp_path: Path, make_federation: MakeFederation, database: Callable[[str], Awaitable[str]]
) -> None:
    # One crypto worker process each (as in production): they are replaced with the roster.
    fed = await make_federation(nodes=THREE, options={"crypto_workers": 1})
    nl, ke, gb = fed["nl-customs"], fed["ke-customs"], fed["gb-avsec"]
    auth = Authority.of(fed)
    version1 = auth.migration()

    # Imported at ONE node, beside it: it installs it, and the others pull it from it, live.
    assert await import_at(nl.config, version1) == 1
    for member in (nl, ke, gb):
        await eventually(runs_on(member, 1), timeout=CONVERGE, what=f"version 1 at {member.id}")

    async def installed_from_a_peer() -> bool:  # persisted, installed, then audited
        sources = [e["source"] for e in await audited(ke, "roster.installed")]
        assert sources in ([], ["peer:nl-customs"], ["peer:gb-avsec"]), sources
        return bool(sources)

    await eventually(installed_from_a_peer, what="roster.installed at ke-customs")

    # A newcomer that only version 2 lists: it holds version 2 and offers it on first contact.
    za_cfg, request = await newcomer(tmp_path, fed, await database("za-customs"))
    version2 = auth.sign(admit(version1.roster, timestamp(), version1.roster.expires, [request]))
    assert await import_at(za_cfg, version1, version2) == 2
    await sample_users(za_cfg, [], InitReport())
    tokens = {p.name: p.read_text().strip() for p in (za_cfg.keys_dir / "tokens").iterdir()}
    za = fed.members["za-customs"] = Member(za_cfg, None, tokens)
    await fed.start("za-customs")
    for member in (nl, ke, gb, za):
        await eventually(runs_on(member, 2), timeout=CONVERGE, what=f"version 2 at {member.id}")
        assert "za-customs" in member.service.fed.node_ids

    # Nobody restarted: the newcomer is invited, accepts, receives a bulletin and answers it.
    status, body, _ = await nl.api(
        "POST", "/api/v1/channels/c2c/invite", user="admin", body={"node": "za-customs", "rights": ["read", "post"]}
    )
    assert status == 200, body

    async def invited() -> bool:
        try:
            return "za-customs" in za.service.channels.state("c2c").invited
        except Exception:
            return False

    await eventually(invited, what="the invitation at za-customs")
    status, body, _ = await za.api("POST", "/api/v1/channels/c2c/accept", user="admin")
    assert status == 200 and "za-customs" in body["members"], body
    await za.api("POST", "/api/v1/channels/c2c/users", user="admin", body={"user": "officer"})
    await eventually(lambda: _member(nl, "za-customs"), timeout=CONVERGE, what="za-customs a member at nl-customs")
    status, alert = await post(nl)
    assert status == 201 and "za-customs" in alert["recipients"], alert
    await eventually(lambda: holds(za, alert["id"]), timeout=CONVERGE, what="the bulletin at za-customs")
    status, answer = await post(za, kind="feedback", title="Consignment held", references=[alert["id"]])
    assert status == 201, answer
    await eventually(lambda: holds(ke, answer["id"]), timeout=CONVERGE, what="the answer at ke-customs")

    # A forged version 3 (one holder's signature of two) and an older chain change nothing.
    # (The newcomer's offers came from this address too: one per source every few seconds.)
    forged = auth.sign(propose(version2.roster, timestamp(), version2.roster.expires), count=1)
    status, problem = await offer_when_allowed(ke, b"[" + blob(forged)[0] + b"]")
    assert status == 422 and problem["type"].endswith("RosterThreshold"), problem
    status, problem = await offer(ke, b"[" + blob(forged)[0] + b"]")
    assert status == 429 and problem["type"].endswith("RateLimited"), problem
    status, problem = await offer_when_allowed(gb, b"[" + blob(version1)[0] + b"]")
    assert status == 409 and problem["type"].endswith("RosterRollback"), problem
    for member in (ke, gb):
        held = member.service.roster.held
        assert held is not None and held.version == 2 and member.service.fed.roster.version == 2
    refused = await audited(ke, "roster.refused")
    assert refused and refused[-1]["error"] == "RosterThreshold", refused
    assert refused[-1]["source"].startswith("offer:"), refused


async def _member(member: Member, node: str) -> bool:
    return node in member.service.channels.state("c2c").members


async def test_an_expired_roster_stops_traffic_until_a_fresh_version_resumes_it(
    make_federation: MakeFederation,
) -> None:
    fed = await make_federation(start=False)
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    auth = Authority.of(fed)
    version1 = auth.migration(expires=dt.timedelta(seconds=15))  # the nodes start and deliver within it
    for member in (nl, ke):
        await import_at(member.config, version1)
        await fed.start(member.id)
    status, first = await post(nl)
    assert status == 201, first
    await eventually(lambda: holds(ke, first["id"]), what="the first bulletin at ke-customs")
    peers = await asyncio.to_thread(
        CliRunner().invoke, cli, ["peers", "--node", str(fed.folder / "nl-customs.toml"), "--user", "admin"]
    )
    assert peers.exit_code == 0 and "ke-customs" in peers.stdout, peers.output
    assert "warning: roster version 1 " in peers.stderr, peers.stderr  # expires in 0 days (or has expired)

    async def expired() -> bool:
        return bool(nl.service.roster.expired() and ke.service.roster.expired())

    await eventually(expired, timeout=CONVERGE, what="version 1 expired")
    status, problem = await post(nl)
    assert status == 503 and problem["type"].endswith("HeldRosterExpired"), problem
    batch = {
        "bulletins": [
            {"kind": "alert", "title": "in a batch", "handling": {"tlp": "GREEN", "no_onward_sharing": False}}
        ]
    }
    status, problem, _ = await nl.api("POST", "/api/v1/channels/c2c/bulletins/batch", body=batch)
    assert status == 503 and problem["type"].endswith("HeldRosterExpired"), problem  # a batch too
    status, problem, kind = await ke.fed_post(nl, b'{"txn": "t1", "envelopes": []}')
    assert status == 503 and kind == "application/problem+json" and "expired" in problem["detail"], problem
    status, read, _ = await nl.api("GET", f"/api/v1/bulletins/{first['id']}")
    assert status == 200 and read["id"] == first["id"]  # reading what is held goes on
    # Nor does it make federation requests of its own but the roster's: a node kept from the
    # version that revokes a partner would else still pull from it and push to it (found by review).
    gated = nl.service.outbox.transport
    assert gated is nl.service.catchup.transport is nl.service.epochs.transport
    for request in (
        gated.fetch(NodeId("ke-customs"), "/fed/v1/channels/c2c/envelopes?after=0"),
        gated.send(NodeId("ke-customs"), "/fed/v1/envelopes", b'{"txn": "t2", "envelopes": []}'),
    ):
        with pytest.raises(HeldRosterExpired, match="expired"):
            await request
    assert await gated.fetch(NodeId("ke-customs"), f"{ROSTER_PATH}?after=0") is not None

    # A fresh version imported at one node: it posts again, the other takes it by gossip, and
    # what was posted meanwhile is delivered.
    version2 = auth.sign(propose(version1.roster, timestamp(), timestamp(utc_now() + dt.timedelta(days=365))))
    await import_at(nl.config, version2)
    await eventually(runs_on(nl, 2), timeout=CONVERGE, what="version 2 at nl-customs")
    status, second = await post(nl, title="After the fresh roster")
    assert status == 201, second
    await eventually(runs_on(ke, 2), timeout=CONVERGE, what="version 2 at ke-customs")
    await eventually(lambda: holds(ke, second["id"]), timeout=CONVERGE, what="the second bulletin at ke-customs")

    async def drained() -> bool:
        return not (await nl.service.queued_counts()).get("ke-customs")

    await eventually(drained, timeout=CONVERGE, what="nothing queued for ke-customs")


CUSTOMS3 = {"nl-customs": ("NL", "customs"), "ke-customs": ("KE", "customs"), "gb-avsec": ("GB", "customs")}


async def test_a_revoked_node_is_cut_off_its_queue_cancelled_and_removed_from_channels(
    make_federation: MakeFederation,
) -> None:
    fed = await make_federation(nodes=CUSTOMS3)
    nl, ke, gb = fed["nl-customs"], fed["ke-customs"], fed["gb-avsec"]
    auth = Authority.of(fed)
    version1 = auth.migration()
    await import_at(nl.config, version1)
    for member in (nl, ke, gb):
        await eventually(runs_on(member, 1), timeout=CONVERGE, what=f"version 1 at {member.id}")

    # ke-customs is down, with bulletins queued for it at nl-customs.
    await fed.stop("ke-customs")
    status, queued = await post(nl)
    assert status == 201 and {"ke-customs", "gb-avsec"} <= set(queued["recipients"]), queued
    await eventually(lambda: holds(gb, queued["id"]), what="the bulletin at gb-avsec")
    assert (await nl.service.queued_counts()).get("ke-customs")

    # Version 2 revokes it, imported at nl-customs (the channel's owner) only.
    version2 = auth.sign(
        admit(version1.roster, timestamp(), version1.roster.expires, statuses={"ke-customs": "revoked"})
    )
    await import_at(nl.config, version2)
    for member in (nl, gb):
        await eventually(runs_on(member, 2), timeout=CONVERGE, what=f"version 2 at {member.id}")

    # Its queue is cancelled and audited, not retried; the owner removed it from the channel.
    assert not (await nl.service.queued_counts()).get("ke-customs")
    cancelled = [e for e in await audited(nl, "send.refused") if e["to"] == "ke-customs"]
    assert queued["id"] in {e["ref"] for e in cancelled}, cancelled
    assert all(e["reason"] == "cancelled: revoked in roster version 2" for e in cancelled), cancelled
    assert "ke-customs" not in nl.service.fed.node_ids and "ke-customs" not in nl.service.outbox.senders

    def removed(member: Member) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            state = member.service.channels.state("c2c")
            return "ke-customs" not in state.members and "ke-customs" not in state.invited

        return check

    for member in (nl, gb):
        await eventually(removed(member), timeout=CONVERGE, what=f"ke-customs removed at {member.id}")

    # Back up, still on version 1, it cannot connect: the handshake refuses its certificate.
    await fed.start("ke-customs")
    for server in (nl, gb):
        try:
            status, _, _ = await server.fed_post(ke, b'{"txn": "t1", "envelopes": []}')
        except aiohttp.ClientError:
            continue
        raise AssertionError(f"{server.id} answered ke-customs with {status}")

    # Nothing else is lost: the rest of the channel goes on, and ke-customs receives nothing new.
    status, after = await post(nl, title="After the revocation")
    assert status == 201 and "ke-customs" not in after["recipients"], after
    await eventually(lambda: holds(gb, after["id"]), what="the next bulletin at gb-avsec")
    assert not await holds(ke, after["id"])
    held = ke.service.roster.held
    assert held is not None and held.version == 1


async def refused(member: Member) -> list[dict[str, Any]]:
    """The equivocations `member` audited."""
    return [e for e in await audited(member, "roster.refused") if e["error"] == "RosterEquivocation"]


def forked(member: Member, version: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:  # recorded, then audited
        return version in member.service.roster.equivocations and bool(await refused(member))

    return check


async def test_two_nodes_given_two_versions_with_one_number_each_find_the_fork_from_the_other(
    make_federation: MakeFederation,
) -> None:
    """The authority signs two different versions 2 (a split view: each node is shown its own).
    Both nodes run on theirs, so no pull ever happens (neither is behind); the hash beside the
    version in every federation request and answer (6a.11) makes each ask the other for its copy,
    refuse it as an equivocation with both hashes audited, and show the fork in its roster's
    status and its metrics. Neither installs the other's version."""
    fed = await make_federation(start=False)
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    auth = Authority.of(fed)
    version1 = auth.migration()
    expires = version1.roster.expires
    one = auth.sign(propose(version1.roster, timestamp(), expires))
    other = auth.sign(propose(version1.roster, timestamp(utc_now() + dt.timedelta(seconds=1)), expires))
    for member, two in ((nl, one), (ke, other)):
        await import_at(member.config, version1, two)
        await fed.start(member.id)
    hashes = {nl.id: roster_hash(one.roster), ke.id: roster_hash(other.roster)}
    assert hashes[nl.id] != hashes[ke.id]

    for member, peer in ((nl, ke), (ke, nl)):
        await eventually(forked(member, 2), timeout=CONVERGE, what=f"the fork seen at {member.id}")
        fork = member.service.roster.equivocations[2]
        assert (fork.held_hash, fork.other_hash, fork.source) == (hashes[member.id], hashes[peer.id], f"peer:{peer.id}")
        held = member.service.roster.held
        assert held is not None and held.hash == hashes[member.id]  # its own version, still
        entries = await refused(member)
        assert (entries[-1]["held_hash"], entries[-1]["offered_hash"]) == (
            hashes[member.id],
            hashes[peer.id],
        )
        status = member.service.roster.status()
        assert status is not None and status.warning is not None and hashes[peer.id] in status.warning
        code, text = await scrape(member)
        figures = samples(text)
        assert code == 200 and figures[("exchange_roster_equivocations", ())] == 1
        assert figures[("exchange_roster_expiry_timestamp_seconds", ())] == held.expires_at.timestamp()
        # The console's partners page says so too, to an administrator, in English and French.
        await set_password(member.service.store, "admin", PASSWORD, actor="test")
        async with console_session(member, "admin", PASSWORD) as http:
            for lang, said in (("en", "The authority signed two roster versions 2"), ("fr", "deux versions 2")):
                async with http.get("/console/peers", headers={"Accept-Language": lang}) as resp:
                    page = await resp.text()
                assert resp.status == 200 and said in page and hashes[peer.id] in page, page
                assert held.hash in page and 'role="alert"' in page


async def test_a_fork_between_branches_of_different_lengths_is_found_on_both_sides(
    make_federation: MakeFederation,
) -> None:
    """nl-customs holds 1, 2 and 3 of one branch; ke-customs 1 and another 2 (both 2s signed by the
    authority). ke-customs, behind, pulls 3, which does not follow its 2, and asks for nl-customs'
    2; nl-customs, ahead, hears ke-customs name version 2 with a hash it did not store for it and
    asks for ke-customs' 2. Each records the fork at version 2 and keeps its own chain."""
    fed = await make_federation(start=False)
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    auth = Authority.of(fed)
    version1 = auth.migration()
    expires = version1.roster.expires
    two = auth.sign(propose(version1.roster, timestamp(), expires))
    three = auth.sign(propose(two.roster, timestamp(), expires))
    other = auth.sign(propose(version1.roster, timestamp(utc_now() + dt.timedelta(seconds=1)), expires))
    await import_at(nl.config, version1, two, three)
    await import_at(ke.config, version1, other)
    for member in (nl, ke):
        await fed.start(member.id)
    hashes = {nl.id: roster_hash(two.roster), ke.id: roster_hash(other.roster)}

    for member, peer, holds_version in ((nl, ke, 3), (ke, nl, 2)):
        await eventually(forked(member, 2), timeout=CONVERGE, what=f"the fork seen at {member.id}")
        fork = member.service.roster.equivocations[2]
        assert (fork.held_hash, fork.other_hash, fork.source) == (hashes[member.id], hashes[peer.id], f"peer:{peer.id}")
        held = member.service.roster.held
        assert held is not None and held.version == holds_version


async def test_the_gossip_loop_goes_on_when_its_announcement_at_start_fails(
    make_federation: MakeFederation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The announcement a node makes at start ran before the loop's guard: a database error then (a
    PostgreSQL failover at start) ended the loop for good, silently until the node stopped, and no
    version imported beside the node was taken again, no expiry warned of (a read-only review)."""
    fed = await make_federation()
    nl = fed["nl-customs"]
    real = nl.service.gossip
    gossip = RosterGossip(real.me, real.roster, real.fed, refresh_seconds=0.05)
    monkeypatch.setattr(gossip, "version", lambda: 1)  # a node that holds a version announces it at start

    async def failover(*, everyone: bool = False) -> None:
        raise sa.exc.OperationalError("SELECT", {}, Exception("the database failed over"))

    monkeypatch.setattr(gossip, "announce", failover)
    reloads = 0

    async def reload() -> bool:
        nonlocal reloads
        reloads += 1
        return False

    monkeypatch.setattr(real.roster, "reload", reload)

    async def rounds() -> bool:
        return reloads >= 2

    running = asyncio.create_task(gossip.run())
    try:
        await eventually(rounds, timeout=10, what="the loop's rounds")
        assert not running.done()
    finally:
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
