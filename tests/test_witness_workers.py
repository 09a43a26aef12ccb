"""A witness run as several workers co-signs at most one of two checkpoints of one size with
different roots, pushed at once to two of its workers (docs/audit.md, 4): its judgement and its
record of the checkpoint are one compare-and-swap across workers; the other push is then judged
against the first and refused as a split view. Before, each worker read what it had seen, judged,
and recorded unconditionally: both were co-signed, and the witness's signatures vouched for two
histories. Also: past the bound of split views kept, a new one is still logged as an error; and a
C2SP witness cannot be named like a roster node, whose cosignatures its own would stand for.
Found by a read-only review; SQLite and PostgreSQL (two stores over one database)."""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os

import pytest
import sqlalchemy as sa

from exchange.audit.checkpoint import Checkpoint, log_origin, sign_checkpoint
from exchange.audit.tlog_witness import WITNESS_KEY_TYPE, verifier_key
from exchange.audit.witness import cosign_request
from exchange.config import TlogWitnessConfig
from exchange.crypto import SigningKey
from exchange.errors import ConfigError, SplitView
from exchange.merkle import consistency_proof, root_from_leaf_hashes
from exchange.service.audit.tlog_push import c2sp_witnesses
from exchange.service.audit.witness import MAX_SPLIT_VIEWS, Witness
from exchange.store import Store, audit_log
from tests.conftest import MakeFederation
from tests.test_audit_e2e import checkpoint


async def test_two_workers_of_one_witness_cosign_at_most_one_of_two_histories(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    assert (await checkpoint(nl))["witnessing"] == {"ke-customs": "cosigned"}
    w1 = ke.service.audit.witness
    seen = await w1.seen(nl.id)
    assert seen is not None
    async with nl.service.store.read() as conn:
        query = sa.select(audit_log.c.leaf_hash).where(audit_log.c.idx < seen.size).order_by(audit_log.c.idx)
        leaves = [bytes(h) for (h,) in await conn.execute(query)]

    def fork() -> tuple[str, bytes]:  # the next size, with a leaf of its own: two are two histories
        tree = [*leaves, os.urandom(32)]
        cp = Checkpoint(log_origin(nl.id), len(tree), root_from_leaf_hashes(tree))
        note = sign_checkpoint(cp, nl.service.keys.signing).render()
        return note, cosign_request(note, seen.size, consistency_proof(tree, seen.size))

    (note_a, body_a), (note_b, body_b) = fork(), fork()

    second: Store | None = None
    if ke.service.store.shared:  # a second worker: its own engine over the same database
        second = await Store.open(ke.config.database_url)
        w2 = Witness(ke.id, second, w1._key, w1.fed, w1.keeper, w1._transport, w1._partners, per_log=w1.per_log)
    else:  # one process: the same store, another in-process lock
        w2 = copy.copy(w1)
        w2._locks = {}
    try:
        answers = await asyncio.gather(
            w1.cosign(nl.id, json.loads(body_a)), w2.cosign(nl.id, json.loads(body_b)), return_exceptions=True
        )
        outcomes = [type(a).__name__ if isinstance(a, BaseException) else a["status"] for a in answers]
        # One is co-signed; the other is judged against it: a split view, or stale (the log must
        # push it again from the size the witness holds now, and is then caught).
        assert outcomes.count("cosigned") == 1 and {*outcomes} <= {"cosigned", "SplitView", "stale"}, outcomes
        if "stale" in outcomes:
            late = note_b if outcomes[1] == "stale" else note_a
            with pytest.raises(SplitView):
                await w1.cosign(nl.id, {"checkpoint": late, "old_size": seen.size + 1, "proof": []})
    finally:
        if second is not None:
            await second.close()


async def test_a_split_view_past_the_bound_kept_is_still_logged(
    make_federation: MakeFederation, caplog: pytest.LogCaptureFixture
) -> None:
    fed = await make_federation()
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    await checkpoint(nl)
    witness = ke.service.audit.witness
    seen = await witness.seen(nl.id)
    assert seen is not None

    def conflicting() -> dict[str, object]:
        note = sign_checkpoint(Checkpoint(log_origin(nl.id), seen.size, os.urandom(32)), nl.service.keys.signing)
        return {"checkpoint": note.render(), "old_size": seen.size, "proof": []}

    for _ in range(MAX_SPLIT_VIEWS):
        with pytest.raises(SplitView):
            await witness.cosign(nl.id, conflicting())
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="exchange.audit"), pytest.raises(SplitView):
        await witness.cosign(nl.id, conflicting())
    assert any("not stored" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


def test_a_c2sp_witness_named_like_a_node_is_refused() -> None:
    key = SigningKey(b"\x01" * 32).verify_key
    for name in ("ke-customs", "witness1"):
        config = TlogWitnessConfig(
            url="https://witness.example.org/", vkey=verifier_key(name, WITNESS_KEY_TYPE, key).render()
        )
        with pytest.raises(ConfigError, match="node id"):
            c2sp_witnesses([config])
    good = TlogWitnessConfig(
        url="https://witness.example.org/", vkey=verifier_key("witness.example.org", WITNESS_KEY_TYPE, key).render()
    )
    assert [w.name for w in c2sp_witnesses([good])] == ["witness.example.org"]


async def test_a_cosignature_row_edited_into_the_database_is_not_shown(make_federation: MakeFederation) -> None:
    """What is shown as co-signed (the checkpoint's `witnesses`, how far each partner co-signed,
    the console and metrics built on them) is checked when shown: a row added to the table by
    someone who can write the database, whose line does not verify, is not shown, and does not
    stop the node asking that witness. Found by a read-only review; SQLite and PostgreSQL."""
    from exchange.audit.note import NoteSignature
    from exchange.store import audit_cosignatures

    fed = await make_federation()
    nl = fed["nl-customs"]
    signed = await checkpoint(nl, witness=False)
    line = NoteSignature("exchange/witness/ke-customs", os.urandom(4), os.urandom(72)).line()
    async with nl.service.store.engine.begin() as conn:
        await conn.execute(
            sa.insert(audit_cosignatures).values(size=signed["size"], witness="ke-customs", line=line, at="x")
        )
    status, shown, _ = await nl.api("GET", "/api/v1/audit/checkpoint", user="auditor")
    assert status == 200 and shown["witnesses"] == [], shown
    assert [p.size for p in await nl.service.audit.cosigned_by(["ke-customs"])] == [0]
    witnessed = await checkpoint(nl)  # ke is asked, and co-signs for real
    assert witnessed["witnessing"] == {"ke-customs": "cosigned"} and witnessed["witnesses"] == ["ke-customs"], witnessed
