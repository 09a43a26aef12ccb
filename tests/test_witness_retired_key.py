"""A checkpoint signed with a log's `verify-only` signing key (one its roster keeps only to check
what the node signed before a rotation, docs/protocol.md 6a.13) is not co-signed as a new
checkpoint (docs/audit.md, 4): a checkpoint larger than the one a witness holds (or the first it
sees) must be signed with a key that signs new items, the node's `active` key or, during a
rotation's overlap, its `retiring` one. A `verify-only` key still verifies what the witness has
seen. Before, the witness opened every checkpoint with any of the node's keys, so whoever stole
a retired key could have new checkpoints co-signed. Found by a review; SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa

from exchange.audit.checkpoint import Checkpoint, log_origin, sign_checkpoint
from exchange.audit.witness import cosign_request
from exchange.crypto import SigningKey
from exchange.merkle import consistency_proof, root_from_leaf_hashes
from exchange.protocol.roster import Federation, FormerKeys
from exchange.store import audit_log
from tests.conftest import MakeFederation
from tests.test_audit_e2e import checkpoint, entries

NL, KE = "nl-customs", "ke-customs"
COSIGN = "/fed/v1/audit/cosign"


async def test_a_retired_key_gets_no_new_checkpoint_cosigned(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    nl, ke = fed[NL], fed[KE]
    assert (await checkpoint(nl))["witnessing"] == {KE: "cosigned"}
    witness = ke.service.audit.witness
    seen = await witness.seen(NL)
    assert seen is not None

    # nl rotated twice: ke's roster keeps one former key verify-only, the other retiring.
    retired, retiring = SigningKey.generate(), SigningKey.generate()
    former = {
        (NL, retired.verify_key.kid): ("verify-only", retired.verify_key.raw),
        (NL, retiring.verify_key.kid): ("retiring", retiring.verify_key.raw),
    }
    ke.service.fed.install(Federation.index(ke.service.fed.roster, FormerKeys(former, frozenset())))

    # The next checkpoint of nl's real log, with a valid proof from what ke co-signed.
    await nl.service.store.audit(
        {"event": "audit.trace", "at": "2026-01-01T00:00:00.000Z", "bulletin": "ab" * 32, "user": "x"}
    )
    async with nl.service.store.read() as conn:
        leaves = [bytes(h) for (h,) in await conn.execute(sa.select(audit_log.c.leaf_hash).order_by(audit_log.c.idx))]
    assert len(leaves) > seen.size
    grown = Checkpoint(log_origin(NL), len(leaves), root_from_leaf_hashes(leaves))
    proof = consistency_proof(leaves, seen.size)

    def push(cp: Checkpoint, key: SigningKey, old: int, hashes: list[bytes]) -> bytes:
        return cosign_request(sign_checkpoint(cp, key).render(), old, hashes)

    # Whoever holds the retired key (and can reach ke as nl) is refused, and nothing moves.
    status, problem, _ = await ke.fed_post(nl, push(grown, retired, seen.size, proof), COSIGN)
    assert status == 422 and "not a verify-only one" in problem["detail"], problem
    assert (await witness.seen(NL)) == seen  # not even re-recorded
    refused = await entries(ke, f"event=request.rejected&peer={NL}")
    assert [(e["path"], e["status"]) for e in refused] == [(COSIGN, 422)]

    # The retired key still verifies the checkpoint ke has seen (old material): nothing new.
    same = Checkpoint(log_origin(NL), seen.size, seen.root)
    status, answer, _ = await ke.fed_post(nl, push(same, retired, seen.size, []), COSIGN)
    assert status == 200 and answer["status"] == "cosigned", answer
    again = await witness.seen(NL)
    assert again is not None and (again.size, again.root) == (seen.size, seen.root)

    # A retiring key (a rotation's overlap) signs new items, as the node's active key does.
    status, answer, _ = await ke.fed_post(nl, push(grown, retiring, seen.size, proof), COSIGN)
    assert status == 200 and answer["status"] == "cosigned", answer
    now = await witness.seen(NL)
    assert now is not None and (now.size, now.root) == (grown.size, grown.root)
