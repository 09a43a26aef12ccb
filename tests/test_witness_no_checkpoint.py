"""A log that answers its witness's pull with no checkpoint, after that witness co-signed one of
its checkpoints, is caught (docs/audit.md, 4, "Split views"): an honest log never loses a
checkpoint it showed, so "none" is a rollback to nothing. The witness records it with the
checkpoint it co-signed and the answer it got, audits it as `audit.split_view` (once per distinct
answer, within the bound of split views kept per log), logs an error, and stays where it was.
Before, the pull said "nothing to witness" and nothing was recorded. A witness that never
co-signed a checkpoint of the log is still answered "nothing to witness" without alarm.
Found by a review; SQLite and PostgreSQL."""

from __future__ import annotations

import copy
import json
import logging
from typing import Any

import pytest
import sqlalchemy as sa

from exchange.errors import SplitView
from exchange.model import NodeId
from exchange.store import audit_checkpoints, audit_cosignatures
from tests.conftest import MakeFederation
from tests.test_audit_e2e import checkpoint, entries
from tests.test_tamper_at_rest import in_database

NL, KE = "nl-customs", "ke-customs"


class Answers:
    """A log's federation API that answers every GET with `answer` (what a hostile log may send)."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    async def fetch(self, node: NodeId, path: str) -> Any:
        return self.answer

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        raise AssertionError("nothing is sent back for an answer without a checkpoint")


async def test_a_log_that_answers_no_checkpoint_after_one_was_cosigned_is_caught(
    make_federation: MakeFederation, caplog: pytest.LogCaptureFixture
) -> None:
    fed = await make_federation()
    nl, ke = fed[NL], fed[KE]
    witness = ke.service.audit.witness
    assert await witness.pull(NL) == "nothing to witness"  # nl signed none yet: no alarm
    witnessed = await checkpoint(nl)
    assert witnessed["witnessing"] == {KE: "cosigned"}

    # nl's checkpoints vanish while it is stopped (wiped, or a backup from before them).
    await fed.stop(NL)
    await in_database(nl.config.database_url, sa.delete(audit_cosignatures), sa.delete(audit_checkpoints))
    await fed.start(NL)

    for _ in range(2):  # the second time is refused again, and recorded no more
        with caplog.at_level(logging.ERROR, logger="exchange.audit"), pytest.raises(SplitView, match="no checkpoint"):
            await witness.pull(NL)
    assert any("no checkpoint" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)

    status, view, _ = await ke.api("GET", "/api/v1/audit/witnessed", user="auditor")
    assert status == 200
    assert {log["node"]: log["size"] for log in view["logs"]}[NL] == witnessed["size"]  # it did not move
    (split,) = view["split_views"]
    assert split["node"] == NL and split["detail"] == "it answered with no checkpoint"
    assert f"\n{witnessed['size']}\n" in split["seen"] and '"checkpoint": null' in split["shown"]
    (audited,) = await entries(ke, f"event=audit.split_view&peer={NL}")
    assert (audited["seen_size"], audited["shown_size"]) == (witnessed["size"], 0)

    # An answer with no checkpoint member at all is refused the same way, in the witness round too.
    hostile = copy.copy(witness)
    hostile._transport = Answers({"proof": []})
    assert (await hostile.tick())["pull"][NL].startswith("SplitView: ")
    status, view, _ = await ke.api("GET", "/api/v1/audit/witnessed", user="auditor")
    assert [s["shown"] for s in view["split_views"]][1:] == ['{"proof": []}']


async def test_an_answer_with_a_lone_surrogate_is_recorded_all_the_same(make_federation: MakeFederation) -> None:
    """JSON may escape a lone surrogate, which no UTF-8 text holds: the answer kept as evidence
    escapes it. Before, encoding the answer raised UnicodeEncodeError and nothing was recorded.
    Found by a read-only review."""
    fed = await make_federation()
    nl, ke = fed[NL], fed[KE]
    await checkpoint(nl)
    hostile = copy.copy(ke.service.audit.witness)
    hostile._transport = Answers(json.loads(b'{"checkpoint": null, "x": "\\ud800 \xc3\xa9"}'))
    assert (await hostile.tick())["pull"][NL].startswith("SplitView: ")
    status, view, _ = await ke.api("GET", "/api/v1/audit/witnessed", user="auditor")
    assert status == 200
    assert [s["shown"] for s in view["split_views"]] == ['{"checkpoint": null, "x": "\\ud800 \\u00e9"}']
