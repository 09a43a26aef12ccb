"""A witnessing exchange with a partner that fails without a split view is seen by the operator
(docs/audit.md, 4, "Failed exchanges"; docs/operations.md, "Monitoring"): logged once per round
at warning level with the partner and the reason, and counted per partner, direction and kind in
`GET /metrics`. Before, a pull answered with a badly signed checkpoint, or a push answered with
something that is no answer, only set the round's outcome, which the round discards: nothing
was logged or counted. A push refused with a 4xx was logged at information level, as if the
partner were only down. Found by a review; SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from exchange.audit.tlog_witness import WITNESS_KEY_TYPE, verifier_key
from exchange.audit.witness import CHECKPOINT_PATH, COSIGN_PATH, failure_kind
from exchange.crypto import SigningKey
from exchange.errors import BadSignature, InvalidInput, PeerError, PeerRefused, SplitView, Unavailable
from exchange.model import NodeId
from exchange.service.audit.tlog_push import C2spWitness, TlogReply
from exchange.service.transport import PeerTransport
from tests.conftest import MakeFederation
from tests.node.test_metrics import samples, scrape
from tests.test_audit_e2e import checkpoint
from tests.test_witness_smaller_push import grow

NL, KE = "nl-customs", "ke-customs"
FAILURES = "exchange_audit_witnessing_failures_total"
KEY = SigningKey.generate().verify_key  # a C2SP witness's key (it never signs here)


class Broken:
    """ke's transport to its partners, with nl's answers to ke's pulls and pushes replaced."""

    def __init__(
        self, inner: PeerTransport, pulled: Callable[[Any], Any], pushed: Callable[[], Any] | None = None
    ) -> None:
        self.inner, self.pulled, self.pushed = inner, pulled, pushed

    async def fetch(self, node: NodeId, path: str) -> Any:
        answer = await self.inner.fetch(node, path)
        return self.pulled(answer) if path.startswith(CHECKPOINT_PATH) else answer

    async def send(self, node: NodeId, path: str, body: bytes) -> Any:
        if path == COSIGN_PATH and self.pushed is not None:
            return self.pushed()
        return await self.inner.send(node, path, body)


def badly_signed(answer: Any) -> Any:
    """nl's answer with one character of its checkpoint's root changed: its signature fails."""
    origin, size, root, rest = answer["checkpoint"].split("\n", 3)
    return {**answer, "checkpoint": "\n".join([origin, size, ("B" if root[0] == "A" else "A") + root[1:], rest])}


def refused() -> Any:
    raise PeerRefused("the checkpoint is not signed by ke-customs", 422)


def warnings(caplog: pytest.LogCaptureFixture, *words: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "exchange.audit" and r.levelno == logging.WARNING and all(w in r.getMessage() for w in words)
    ]


async def test_failed_pulls_and_pushes_are_logged_once_a_round_and_counted(
    make_federation: MakeFederation, caplog: pytest.LogCaptureFixture
) -> None:
    fed = await make_federation()
    nl, ke = fed[NL], fed[KE]
    await checkpoint(nl)  # nl has a checkpoint for ke to pull
    await grow(ke)  # and ke a new one to push to nl
    witness = ke.service.audit.witness
    broken = copy.copy(witness)
    broken._transport = Broken(witness._transport, badly_signed, lambda: {"status": "what?"})

    for round_ in (1, 2):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="exchange.audit"):
            outcome = await broken.tick()
        assert outcome["pull"][NL].startswith("BadSignature"), outcome
        assert outcome["cosign"][NL].startswith("InvalidInput"), outcome
        assert len(warnings(caplog, NL, "BadSignature")) == 1, caplog.records
        assert len(warnings(caplog, NL, "unexpected answer")) == 1, caplog.records
        got = samples((await scrape(ke))[1])
        assert got[(FAILURES, (("direction", "pull"), ("kind", "invalid"), ("partner", NL)))] == round_
        assert got[(FAILURES, (("direction", "push"), ("kind", "invalid"), ("partner", NL)))] == round_

    # A refused push (4xx) is a warning too, not the information that a partner is down.
    broken._transport = Broken(witness._transport, lambda answer: answer, refused)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="exchange.audit"):
        outcome = await broken.tick()
    assert outcome["cosign"][NL].startswith("PeerRefused"), outcome
    assert len(warnings(caplog, NL, "not signed by ke-customs")) == 1, caplog.records
    got = samples((await scrape(ke))[1])
    assert got[(FAILURES, (("direction", "push"), ("kind", "refused"), ("partner", NL)))] == 1
    assert (FAILURES, (("direction", "pull"), ("kind", "invalid"), ("partner", KE))) not in got


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (PeerError("nl-customs: ClientConnectorError: connection refused"), "unreachable"),
        (PeerError("nl-customs answered 503: busy"), "refused"),
        (PeerRefused("forbidden", 403), "refused"),
        (BadSignature("signature does not verify"), "invalid"),
        (InvalidInput("unexpected answer from nl-customs"), "invalid"),
        (SplitView("split view: ..."), "split-view"),
        (Unavailable("the database is away"), "error"),
        (ValueError("Expecting value"), "error"),
    ],
)
def test_how_a_failure_is_counted(exc: BaseException, kind: str) -> None:
    assert failure_kind(exc) == kind


async def test_a_c2sp_witness_that_refuses_or_cannot_be_reached_is_logged_and_counted(
    make_federation: MakeFederation, caplog: pytest.LogCaptureFixture
) -> None:
    """The C2SP witnesses of a node's log are counted as its partners are, under the witness's key
    name. Before, an error status was only the round's outcome, which the round discards, and a
    failure was logged but never counted."""
    fed = await make_federation()
    nl = fed[NL]
    signed = await checkpoint(nl, witness=False)
    cp = await nl.service.audit.keeper.checkpoint_at(signed["size"])
    name = "witness.example.org"
    answers: list[TlogReply | Exception] = []

    class Client:
        async def post(self, url: str, body: bytes, ca_file: Path | None) -> TlogReply:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return answer

    assert nl.service.audit.tlog_push.failures is nl.service.audit.witness.failures  # one count for /metrics
    push = copy.copy(nl.service.audit.tlog_push)  # the node's, with one C2SP witness configured
    push.witnesses = [C2spWitness("https://witness.example.org/", verifier_key(name, WITNESS_KEY_TYPE, KEY))]
    push._client, push._locks, push._held = Client(), {name: asyncio.Lock()}, {}
    label = (("direction", "push"), ("kind", "refused"), ("partner", name))

    answers.append(TlogReply(403, "text/plain", b"unknown log\n"))
    with caplog.at_level(logging.INFO, logger="exchange.audit"):
        outcome = await push.push(cp)
    assert outcome[name] == "PeerRefused: witness.example.org answered 403: unknown log", outcome
    assert len(warnings(caplog, name, "did not co-sign", "unknown log")) == 1, caplog.records
    assert samples((await scrape(nl))[1])[(FAILURES, label)] == 1

    answers.append(PeerError(f"{name}: ClientConnectorError: connection refused"))
    outcome = await push.push(cp)
    assert outcome[name].startswith("PeerError"), outcome
    got = samples((await scrape(nl))[1])
    assert got[(FAILURES, (("direction", "push"), ("kind", "unreachable"), ("partner", name)))] == 1
    assert got[(FAILURES, label)] == 1
    assert (await nl.service.audit.keeper.checkpoint_at(cp.size)).cosignatures == ()  # nothing kept
