"""Every note a node keeps parses (docs/audit.md, 3, "Signature lines"): the signature-line limit
fits the log's line, 64 designated witnesses and 16 C2SP witnesses, and a log keeps returned
cosignatures only from its designated witnesses. Before (found by a read-only review), a note
co-signed by 64 witnesses no longer parsed, and any roster node could add a line to it, so enough
partners could push a note past the limit and have every verifier refuse the log."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from exchange.audit.checkpoint import Checkpoint, cosign, log_origin, sign_checkpoint, witness_name
from exchange.audit.log import KeyRing, LogVerifier
from exchange.audit.note import MAX_SIGNATURES, parse_note
from exchange.audit.quorum import designated
from exchange.audit.witness import cosignature_body
from exchange.audit.witness_sets import MAX_C2SP_WITNESSES, MAX_COSIGNATURES, MAX_WITNESSES
from exchange.config import TlogWitnessConfig
from exchange.crypto import SigningKey
from exchange.errors import ConfigError, Conflict, Forbidden
from exchange.service.audit.keeper import LogKeeper
from exchange.service.audit.tlog_push import c2sp_witnesses
from exchange.service.audit.witness import Witness
from exchange.store import Store
from tests.test_audit_vectors import INPUTS, NoPeers
from tests.vectors import make_audit_vectors as gen
from tests.vectors.make_vectors import recorded_federation, signing_key

LOG = gen.LOG_NODE


def key(label: str) -> SigningKey:
    return SigningKey(hashlib.sha256(label.encode()).digest())


def test_the_limit_fits_every_allowed_configuration() -> None:
    assert MAX_SIGNATURES == 1 + MAX_COSIGNATURES == 1 + MAX_WITNESSES + MAX_C2SP_WITNESSES


def test_a_checkpoint_cosigned_by_64_designated_and_16_c2sp_witnesses_verifies() -> None:
    nodes = [LOG] + [f"w{i:02d}-node" for i in range(80)]
    keys = {n: key(n) for n in nodes}
    c2sp = {f"witness{i}.example.org": key(f"c2sp{i}") for i in range(MAX_C2SP_WITNESSES)}
    ring = KeyRing({n: k.verify_key for n, k in keys.items()}, {n: k.verify_key for n, k in c2sp.items()})
    chosen = designated(ring, LOG, MAX_WITNESSES)
    note = sign_checkpoint(Checkpoint(log_origin(LOG), 10, hashlib.sha256(b"root").digest()), keys[LOG])
    lines = [cosign(note.text, witness_name(w), keys[w], 1_700_000_000) for w in chosen]
    lines += [cosign(note.text, name, k, 1_700_000_000) for name, k in c2sp.items()]
    info = LogVerifier(LOG, ring).checkpoint(note.with_signatures(*lines).render())
    assert len(info.witnesses) == MAX_WITNESSES + MAX_C2SP_WITNESSES


def test_more_c2sp_witnesses_than_fit_are_refused_as_configuration() -> None:
    configs = [TlogWitnessConfig(url=f"https://w{i}.example.org/", vkey="x") for i in range(MAX_C2SP_WITNESSES + 1)]
    with pytest.raises(ConfigError, match=f"at most {MAX_C2SP_WITNESSES} C2SP witnesses"):
        c2sp_witnesses(configs)


@pytest.fixture
async def log(tmp_path: Path) -> AsyncIterator[Witness]:
    """The vectors' log node with one checkpoint, and one designated witness per log (k = 1)."""
    v1 = gen.load_v1()
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'log.db'}")
    keeper = LogKeeper(LOG, store, signing_key(LOG), v1["outputs"]["roster"]["signed"])
    await keeper.start()
    try:
        await store.audit(INPUTS["entries"][0])
        assert await keeper.checkpoint() is not None
        fed = recorded_federation(v1["outputs"])
        keeper.set_witnesses(KeyRing.from_federation(fed).witnesses(LOG))
        yield Witness(LOG, store, signing_key(LOG), fed, keeper, NoPeers(), list, per_log=1)
    finally:
        await keeper.close()
        await store.close()


async def test_a_partner_that_is_not_a_designated_witness_cannot_add_a_line(log: Witness) -> None:
    cp = await log.keeper.latest()
    assert cp is not None
    text = parse_note(cp.note).text
    (chosen,) = log.my_witnesses()
    outsider = next(n for n in log.fed.node_ids if n not in (LOG, chosen))

    def body(node: str) -> object:
        line = cosign(text, witness_name(node), signing_key(node), int(time.time())).line()
        return json.loads(cosignature_body(cp.size, line))

    with pytest.raises(Forbidden, match="not a designated witness"):
        await log.store_cosignature(outsider, body(outsider))
    assert (await log.keeper.checkpoint_at(cp.size)).cosignatures == ()
    await log.store_cosignature(chosen, body(chosen))
    assert (await log.keeper.checkpoint_at(cp.size)).witnesses == [chosen]


async def test_a_checkpoint_keeps_no_more_lines_than_its_note_can_hold(log: Witness) -> None:
    """However the lines come (pushes the log asked for, C2SP witnesses), past the limit a new
    witness's line is refused, and the note as served still parses."""
    cp = await log.keeper.latest()
    assert cp is not None
    text = parse_note(cp.note).text
    for i in range(MAX_COSIGNATURES):
        name = f"witness{i}.example.org"
        await log.keeper.add_cosignature(cp.size, name, cosign(text, name, key(name), int(time.time())).line())
    full = (await log.keeper.checkpoint_at(cp.size)).full_note()
    assert len(parse_note(full).signatures) == MAX_SIGNATURES
    with pytest.raises(Conflict, match=f"holds {MAX_COSIGNATURES} cosignatures"):
        name = "one-too-many.example.org"
        await log.keeper.add_cosignature(cp.size, name, cosign(text, name, key(name), int(time.time())).line())
