"""Envelope v2 on nodes of several worker processes over one PostgreSQL database (issues 13, 14).

Real processes over mutual TLS: the channel's owner runs `exchange node run --workers 3` and the
reader `--workers 2`, both with `envelope_v2 = true`. The author's workers start before any epoch
exists; posts through many connections at once then reach each of them while it holds no epoch,
so each goes to make epoch 0 (before the fix, the second one's insert failed: 500); pushes reach
both reader workers, which each go to fetch it. Exactly one epoch is stored at each
node, every post is v2 under it, no request fails, the reader's workers read every bulletin
(whichever worker took the key), and both audit logs verify and record the epoch once: made at
the owner, its key taken at the reader.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from exchange.audit.epoch_events import EPOCH_GRANT_TAKEN, EPOCH_GRANTED, EPOCH_KEY_TAKEN, EPOCH_MADE
from exchange.protocol.epoch import epoch_hash
from exchange.service.envelopes_v2 import stored_v2
from exchange.service.epoch_grants import ensure_grant
from exchange.service.epochs import EpochBook
from exchange.store import Store, audit_log, bulletins
from exchange.store.tables import channel_epochs, epoch_grants, epoch_keys
from tests import workers as w
from tests.conftest import MakeFederation, Member, eventually
from tests.test_epoch_attacks import NODES, V2, admin_invite_and_accept, channel, post
from tests.test_workers import POSTGRES_ONLY, pg_urls

TOTAL = 120


async def epochs_at(cluster: w.Cluster, node: str) -> tuple[list[tuple[str, int]], int, list[dict[str, Any]]]:
    """A node's stored epochs (channel, n), how many epoch keys, and its audit entries of epochs."""
    engine = create_async_engine(cluster.configs[node].database_url)
    try:
        async with engine.connect() as conn:
            epochs = [(r.channel, int(r.n)) for r in await conn.execute(sa.select(channel_epochs))]
            keys = int(await conn.scalar(sa.select(sa.func.count()).select_from(epoch_keys)) or 0)
            entries = [
                json.loads(e) for e in await conn.scalars(sa.select(audit_log.c.entry).order_by(audit_log.c.idx))
            ]
    finally:
        await engine.dispose()
    return epochs, keys, [e for e in entries if e["event"].startswith("epoch.")]


async def v2_envelopes(cluster: w.Cluster, node: str) -> int:
    engine = create_async_engine(cluster.configs[node].database_url)
    try:
        async with engine.connect() as conn:
            return sum(stored_v2(bytes(e)) for e in await conn.scalars(sa.select(bulletins.c.envelope)))
    finally:
        await engine.dispose()


async def read_all(cluster: w.Cluster, ids: set[str]) -> list[str]:
    """Read each bulletin through the reader's API, each on a new connection (any of its workers);
    what failed."""
    url = f"{cluster.configs[w.READER].endpoint}/api/v1/bulletins"
    headers = {"Authorization": f"Bearer {cluster.token(w.READER)}"}
    failed: list[str] = []
    async with cluster.client(w.READER, connections=8) as session:
        for bid in sorted(ids):
            try:
                async with session.get(f"{url}/{bid}", headers=headers) as resp:
                    body = await resp.json()
                    if resp.status != 200 or not body["bulletin"]["title"].startswith("seizure "):
                        failed.append(f"{bid[:8]} {resp.status}: {str(body)[:200]}")
            except (aiohttp.ClientError, OSError) as exc:
                failed.append(f"{bid[:8]} {type(exc).__name__}: {exc}")
    return failed


@pytest.mark.slow
@POSTGRES_ONLY
async def test_v2_over_workers_makes_one_epoch_and_every_bulletin_reads(
    tmp_path: Path, database: Callable[[str], Awaitable[str]]
) -> None:
    cluster = await w.Cluster.provision(tmp_path, await pg_urls(database), workers=3, v2=True, reader_workers=2)
    try:
        # Every author worker starts before any epoch exists (none loads one), and so must make or
        # take epoch 0 once posts reach it; a generous deadline: seven interpreters start.
        await cluster.up(timeout=240, author_first=True)
        assert len(cluster.worker_pids()) == 3 and len(cluster.worker_pids(w.READER)) == 2
        posted = await w.post_many(cluster, TOTAL, concurrency=24)
        assert not posted.failed, posted.failed[:5]
        assert posted.ok == TOTAL and sorted(posted.seqs) == list(range(1, TOTAL + 1))
        await w.until(lambda: w.delivered(cluster, TOTAL), 120, "not everything was delivered")
        unread = await read_all(cluster, posted.ids)
        verified = {node: await w.run_cli("audit", "verify", "--node", str(cluster.path(node))) for node in w.NODES}
        author = await epochs_at(cluster, w.AUTHOR)
        reader = await epochs_at(cluster, w.READER)
        v2 = {node: await v2_envelopes(cluster, node) for node in w.NODES}
    finally:
        cluster.stop()
    assert not unread, unread[:5]
    for node, (code, out, err) in verified.items():
        assert code == 0 and "OK" in out, (node, out, err)
    # One epoch at each node, whichever worker made or took it, and every bulletin under it.
    assert author[:2] == ([("c2c", 0)], 1) and reader[:2] == ([("c2c", 0)], 1)
    assert v2 == {w.AUTHOR: TOTAL, w.READER: TOTAL}
    # Audited once: made at the owner, its key taken (from its wrap) at the reader.
    assert [(e["event"], e["n"]) for e in author[2]] == [(EPOCH_MADE, 0)]
    assert author[2][0]["readers"] == sorted(w.NODES) and author[2][0]["state"] >= 0
    assert [(e["event"], e["n"], e["owner"]) for e in reader[2]] == [(EPOCH_KEY_TAKEN, 0, w.AUTHOR)]
    assert reader[2][0]["hash"] == author[2][0]["hash"]


async def audited(member: Member, *kinds: str) -> list[dict[str, Any]]:
    async with member.service.store.read() as conn:
        entries = [json.loads(e) for e in await conn.scalars(sa.select(audit_log.c.entry).order_by(audit_log.c.idx))]
    return [e for e in entries if e["event"] in kinds]


@POSTGRES_ONLY
async def test_two_workers_making_an_epoch_or_grant_at_once_store_one(
    make_federation: MakeFederation, database: Callable[[str], Awaitable[str]]
) -> None:
    """Two workers of the owner (its node's EpochBook and a second one over a store of its own on
    the same database, as another process has) make the next epoch, and then the same history
    grant, at the same moment: one record and one grant are stored and audited, and both workers
    hold them."""
    fed = await make_federation(
        nodes={n: NODES[n] for n in ("nl-customs", "ke-customs", "de-customs")},
        channels=[channel("nl-customs", "ke-customs")],
        options=V2,
    )
    nl, de = fed["nl-customs"], fed["de-customs"]
    svc = nl.service
    await post(nl, "under epoch 0")
    twin_store = await Store.open(nl.config.database_url)
    twin = EpochBook(svc.me, twin_store, svc.fed, svc.keys, svc.channels, svc.transport)
    try:
        await twin.load()
        await admin_invite_and_accept(nl, de)  # the readers change: epoch 1 is due
        state = svc.channels.state("c2c")
        ours, theirs = await asyncio.gather(svc.epochs.make_current(state), twin.make_current(state))
        assert ours is not None and theirs is not None and ours.n == theirs.n == 1
        assert epoch_hash(ours) == epoch_hash(theirs)
        keys = [book.key("c2c", 1) for book in (svc.epochs, twin)]
        assert keys[0] is not None and keys[1] is not None and keys[0].secret_bytes() == keys[1].secret_bytes()
        status, body, _ = await nl.api(
            "POST", "/api/v1/channels/c2c/grant-history", user="admin", body={"node": "de-customs"}
        )
        assert status == 200, body
        state = svc.channels.state("c2c")
        await asyncio.gather(ensure_grant(svc.epochs, state, "de-customs"), ensure_grant(twin, state, "de-customs"))
        assert [[e.n for e in g.epochs] for g in svc.epochs.grants["c2c"]] == [[0]]
        assert [[e.n for e in g.epochs] for g in twin.grants["c2c"]] == [[0]]
    finally:
        await twin_store.close()
    async with svc.store.read() as conn:
        assert list(await conn.scalars(sa.select(channel_epochs.c.n).order_by(channel_epochs.c.n))) == [0, 1]
        assert await conn.scalar(sa.select(sa.func.count()).select_from(epoch_grants)) == 1
    made = await audited(nl, EPOCH_MADE, EPOCH_GRANTED)
    assert [(e["event"], e.get("n"), e.get("epochs")) for e in made] == [
        (EPOCH_MADE, 0, None),
        (EPOCH_MADE, 1, None),
        (EPOCH_GRANTED, None, [0]),
    ]

    async def granted() -> bool:
        de.service.catchup.wake()
        return bool(await audited(de, EPOCH_GRANT_TAKEN))

    await eventually(granted, timeout=30, what="the grant taken at de-customs")
