"""A witness that co-signed a checkpoint of size 0 (a log of no entries: the reference log signs
none, another implementation may) takes the log's next checkpoint as it takes a first one: every
tree extends the empty tree, and the proof from size 0 is `[]` (docs/audit.md, 4), as the C2SP
witness does (`exchange.audit.tlog_witness.judge`). Before, the proof from size 0 failed ("a
consistency proof from the empty tree is meaningless"): the witness recorded a split view,
audited it, and never co-signed that log again. Found by a review; SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa

from exchange.audit.checkpoint import Checkpoint, log_origin, sign_checkpoint
from exchange.audit.witness import cosign_request
from exchange.merkle import EMPTY_ROOT, root_from_leaf_hashes
from exchange.store import audit_log
from tests.conftest import MakeFederation
from tests.test_audit_e2e import entries

NL, KE = "nl-customs", "ke-customs"
COSIGN = "/fed/v1/audit/cosign"


async def test_a_checkpoint_after_one_of_size_0_is_cosigned_not_a_split_view(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    nl, ke = fed[NL], fed[KE]
    witness, key = ke.service.audit.witness, nl.service.keys.signing

    def push(cp: Checkpoint, old: int) -> bytes:
        return cosign_request(sign_checkpoint(cp, key).render(), old, [])

    empty = Checkpoint(log_origin(NL), 0, EMPTY_ROOT)
    status, answer, _ = await ke.fed_post(nl, push(empty, 0), COSIGN)
    assert status == 200 and answer["status"] == "cosigned", answer
    status, answer, _ = await ke.fed_post(nl, push(empty, 0), COSIGN)  # again: the same checkpoint
    assert status == 200 and answer["status"] == "cosigned", answer

    async with nl.service.store.read() as conn:
        leaves = [bytes(h) for (h,) in await conn.execute(sa.select(audit_log.c.leaf_hash).order_by(audit_log.c.idx))]
    assert leaves
    grown = Checkpoint(log_origin(NL), len(leaves), root_from_leaf_hashes(leaves))
    status, answer, _ = await ke.fed_post(nl, push(grown, 0), COSIGN)
    assert status == 200 and answer["status"] == "cosigned", answer  # before: 409, a split view
    seen = await witness.seen(NL)
    assert seen is not None and (seen.size, seen.root) == (grown.size, grown.root)
    status, view, _ = await ke.api("GET", "/api/v1/audit/witnessed", user="auditor")
    assert status == 200 and view["split_views"] == [], view["split_views"]
    assert await entries(ke, f"event=audit.split_view&peer={NL}") == []


async def test_another_root_of_size_0_is_still_a_split_view(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    nl, ke = fed[NL], fed[KE]
    key = nl.service.keys.signing
    empty = Checkpoint(log_origin(NL), 0, EMPTY_ROOT)
    status, answer, _ = await ke.fed_post(nl, cosign_request(sign_checkpoint(empty, key).render(), 0, []), COSIGN)
    assert status == 200 and answer["status"] == "cosigned", answer
    other = Checkpoint(log_origin(NL), 0, b"\x01" * 32)
    status, problem, _ = await ke.fed_post(nl, cosign_request(sign_checkpoint(other, key).render(), 0, []), COSIGN)
    assert status == 409, problem
    seen = await ke.service.audit.witness.seen(NL)
    assert seen is not None and seen.root == EMPTY_ROOT
