"""A log keeps a witness's cosignature only if its timestamp is plausible (docs/audit.md, 4,
"Cosignature times"): not later than the log's clock plus COSIGNATURE_SKEW (a witness cannot
have checked the checkpoint in the future; kept, it would make the checkpoint look fresher than
it is to whoever reads the times), and not earlier than when the log signed the checkpoint minus
the same allowance (the witness cannot have checked it before it existed; kept, it would date the
log's entries earlier than they were written). The pull's return leg, a push's answer and a
C2SP witness's answer are checked. Before, any timestamp was kept. Found by a review; SQLite and
PostgreSQL."""

from __future__ import annotations

import copy
import datetime as dt
import time
from pathlib import Path
from typing import Any

import pytest

from exchange.audit.checkpoint import COSIGNATURE_SKEW, check_cosignature_time, cosign, witness_name
from exchange.audit.note import NoteSignature, parse_note
from exchange.audit.tlog_witness import WITNESS_KEY_TYPE, verifier_key
from exchange.audit.witness import cosignature_body
from exchange.crypto import SigningKey
from exchange.errors import InvalidInput
from exchange.model import NodeId
from exchange.service.audit.tlog_push import C2spWitness, TlogPush, TlogReply
from tests.conftest import MakeFederation
from tests.test_audit_e2e import checkpoint

NL, KE = "nl-customs", "ke-customs"
T0 = 1_800_000_000
SIGNED = "2027-01-15T08:00:00.000Z"  # T0


def made_at(timestamp: int) -> NoteSignature:
    return cosign("o\n1\n" + "A" * 43 + "=\n", "w", SigningKey(b"\x02" * 32), timestamp)


def test_the_rule() -> None:
    check_cosignature_time(made_at(T0), SIGNED, T0)
    check_cosignature_time(made_at(T0 + COSIGNATURE_SKEW), SIGNED, T0)  # a clock a little ahead
    check_cosignature_time(made_at(T0 - COSIGNATURE_SKEW), SIGNED, T0 + 3600)  # or a little behind
    check_cosignature_time(made_at(T0 - 86400), "not a time", T0)  # no signing time known: no lower bound
    with pytest.raises(InvalidInput, match="301 s after this node's clock"):
        check_cosignature_time(made_at(T0 + COSIGNATURE_SKEW + 1), SIGNED, T0)
    with pytest.raises(InvalidInput, match="301 s before this node signed the checkpoint"):
        check_cosignature_time(made_at(T0 - COSIGNATURE_SKEW - 1), SIGNED, T0 + 3600)


class Answers:
    """A witness's federation API that answers every push with `answer`."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer

    async def fetch(self, node: NodeId, path: str) -> Any:
        raise AssertionError("not pulled")

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        return self.answer


async def test_a_log_keeps_no_cosignature_dated_in_the_future_or_before_its_checkpoint(
    make_federation: MakeFederation,
) -> None:
    fed = await make_federation()
    nl, ke = fed[NL], fed[KE]
    signed = await checkpoint(nl, witness=False)
    text = parse_note(signed["note"]).text
    at = int(dt.datetime.fromisoformat(signed["signed_at"]).timestamp())

    def line(timestamp: int) -> str:
        return cosign(text, witness_name(KE), ke.service.keys.signing, timestamp).line()

    async def returned(timestamp: int) -> tuple[int, Any]:  # the pull's return leg, from ke
        status, answer, _ = await nl.fed_post(
            ke, cosignature_body(signed["size"], line(timestamp)), "/fed/v1/audit/cosignatures"
        )
        return status, answer

    async def shown() -> list[str]:
        status, cp, _ = await nl.api("GET", "/api/v1/audit/checkpoint", user="auditor")
        assert status == 200
        return list(cp["witnesses"])

    for timestamp, why in ((int(time.time()) + 3600, "after this node's clock"), (at - 86400, "before this node")):
        status, problem = await returned(timestamp)
        assert status == 422 and why in problem["detail"], problem
        assert await shown() == []

    # A push whose witness answers with a line dated an hour ahead: refused, nothing kept.
    log = copy.copy(nl.service.audit.witness)
    log._push_locks, log._pushed = {}, {}
    log._transport = Answers({"status": "cosigned", "cosignature": line(int(time.time()) + 3600)})
    cp = await nl.service.audit.keeper.checkpoint_at(signed["size"])
    outcome = await log.request_cosignatures(cp, [KE])
    assert outcome[KE].startswith("InvalidInput: ") and "after this node's clock" in outcome[KE], outcome
    assert await shown() == []

    status, answer = await returned(int(time.time()) + 30)  # a clock a little ahead is fine
    assert (status, answer) == (200, {"stored": True})
    assert await shown() == [KE]


async def test_a_c2sp_witness_line_dated_ahead_is_not_kept(make_federation: MakeFederation) -> None:
    fed = await make_federation()
    nl = fed[NL]
    signed = await checkpoint(nl, witness=False)
    keeper = nl.service.audit.keeper
    cp = await keeper.checkpoint_at(signed["size"])
    name, key = "witness.example.org", SigningKey.generate()
    line = cosign(parse_note(cp.note).text, name, key, int(time.time()) + 3600).line()

    class Client:
        async def post(self, url: str, body: bytes, ca_file: Path | None) -> TlogReply:
            return TlogReply(200, "text/plain", line.encode())

    witness = C2spWitness("https://witness.example.org/", verifier_key(name, WITNESS_KEY_TYPE, key.verify_key))
    outcome = await TlogPush(NL, keeper, [witness], Client()).push(cp)
    assert outcome[name].startswith("InvalidInput: ") and "after this node's clock" in outcome[name], outcome
    assert (await keeper.checkpoint_at(cp.size)).cosignatures == ()
