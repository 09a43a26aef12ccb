"""A split view the witness recorded already is logged as an error again in each round that sees
it (docs/audit.md, 4, "Split views"), so that an operator cannot miss one that goes on, but once
a round, and without a new audit entry or evidence row (the bound of 16 kept per log holds).
Before, only the first sighting was logged: later rounds refused it silently. Found by a review;
SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import logging
from typing import Any

import pytest

from exchange.audit.witness import CHECKPOINT_PATH
from exchange.model import NodeId
from exchange.service.transport import PeerTransport
from tests.conftest import MakeFederation
from tests.node.test_metrics import samples, scrape
from tests.test_audit_e2e import checkpoint, entries

NL, KE = "nl-customs", "ke-customs"


class RolledBack:
    """ke's transport, with nl answering ke's pulls with no checkpoint (a rollback to nothing)."""

    def __init__(self, inner: PeerTransport) -> None:
        self.inner = inner

    async def fetch(self, node: NodeId, path: str) -> Any:
        if path.startswith(CHECKPOINT_PATH):
            return {"checkpoint": None, "proof": []}
        return await self.inner.fetch(node, path)

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        return await self.inner.send(node, path, body)


def split_view_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "exchange.audit" and r.levelno == logging.ERROR and "split view" in r.getMessage()
    ]


async def test_a_known_split_view_is_logged_again_each_round_and_recorded_once(
    make_federation: MakeFederation, caplog: pytest.LogCaptureFixture
) -> None:
    fed = await make_federation()
    nl, ke = fed[NL], fed[KE]
    assert (await checkpoint(nl))["witnessing"] == {KE: "cosigned"}
    witness = ke.service.audit.witness
    hostile = copy.copy(witness)
    hostile._transport = RolledBack(witness._transport)

    for round_ in (1, 2, 3):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="exchange.audit"):
            outcome = await hostile.tick()
            assert outcome["pull"][NL].startswith("SplitView"), outcome
            (error,) = split_view_errors(caplog)
            assert NL in error and "no checkpoint" in error, error
            # seen again within the same round (a push, another pull): not logged again
            again = await hostile._pull_quietly(NL)
            assert again.startswith("SplitView") and len(split_view_errors(caplog)) == 1, caplog.records
        got = samples((await scrape(ke))[1])
        kind = (("direction", "pull"), ("kind", "split-view"), ("partner", NL))
        assert got[("exchange_audit_witnessing_failures_total", kind)] == 2 * round_

    status, view, _ = await ke.api("GET", "/api/v1/audit/witnessed", user="auditor")
    assert status == 200 and len(view["split_views"]) == 1, view["split_views"]
    assert len(await entries(ke, f"event=audit.split_view&peer={NL}")) == 1
