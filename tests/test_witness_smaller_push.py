"""An honest log can put a smaller checkpoint to a witness after a larger one, and the witness
must not take it for a rollback (docs/audit.md, 4, "Split views").

A log run as several workers signs checkpoints on demand in any worker, while one worker runs
the round. Each worker checks, before it pushes, that its checkpoint is not smaller than the
log's latest (`Witness._ask`), but between that check and the push reaching the witness another
worker may sign a larger checkpoint and have it co-signed (or the witness may pull it: the same
window exists in one process). The witness then got the smaller one and recorded a split view
("it went back to size n"), audited it and logged an error, against an honest log. Now a smaller
checkpoint pushed is answered `stale` with the size the witness holds; a real rollback is still
caught: by the pull (a log's latest is never smaller than a checkpoint it showed), by a proof
that fails, or by another root at a size seen (tests/test_tamper_at_rest.py,
tests/test_audit_e2e.py, tests/test_witness_workers.py). Found by a review; SQLite and PostgreSQL.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any

from exchange.audit.events import AUDIT_TRACE
from exchange.model import NodeId
from exchange.service.transport import PeerTransport
from tests.conftest import MakeFederation, Member
from tests.test_audit_e2e import checkpoint, entries

NL, KE = "nl-customs", "ke-customs"


class Meanwhile:
    """A worker's transport to its partners: before its first push goes out, `meanwhile` runs."""

    def __init__(self, inner: PeerTransport, meanwhile: Callable[[], Awaitable[None]]) -> None:
        self.inner = inner
        self.meanwhile: Callable[[], Awaitable[None]] | None = meanwhile

    async def fetch(self, node: NodeId, path: str) -> Any:
        return await self.inner.fetch(node, path)

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        if self.meanwhile is not None:
            run, self.meanwhile = self.meanwhile, None
            await run()
        return await self.inner.send(node, path, body)


async def grow(member: Member) -> None:
    await member.service.store.audit(
        {"event": AUDIT_TRACE, "at": "2026-01-01T00:00:00.000Z", "bulletin": "ab" * 32, "user": "x"}
    )


async def test_a_smaller_checkpoint_an_honest_worker_pushes_late_is_stale_not_a_split_view(
    make_federation: MakeFederation,
) -> None:
    fed = await make_federation()
    nl, ke = fed[NL], fed[KE]
    assert (await checkpoint(nl))["witnessing"] == {KE: "cosigned"}

    await grow(nl)
    on_demand = await nl.service.audit.keeper.checkpoint()  # signed on demand by one worker
    assert on_demand is not None
    larger: dict[str, Any] = {}

    async def round_of_another_worker() -> None:
        await grow(nl)
        larger.update(await checkpoint(nl))  # signed and co-signed while the first push is on its way

    worker = copy.copy(nl.service.audit.witness)  # another process: its own memory of what it pushed
    worker._push_locks, worker._pushed = {}, {}
    worker._transport = Meanwhile(worker._transport, round_of_another_worker)
    outcome = await worker.request_cosignatures(on_demand, [KE])

    assert larger["witnessing"] == {KE: "cosigned"} and larger["size"] > on_demand.size
    assert outcome[KE] == f"superseded: {KE} co-signed checkpoint {larger['size']} already", outcome
    status, view, _ = await ke.api("GET", "/api/v1/audit/witnessed", user="auditor")
    assert status == 200 and view["split_views"] == [], view["split_views"]
    assert {log["node"]: log["size"] for log in view["logs"]}[NL] == larger["size"]
    assert await entries(ke, f"event=audit.split_view&peer={NL}") == []
