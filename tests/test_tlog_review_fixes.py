"""Three findings of a review of the node's C2SP tlog-witness code (docs/audit.md, section 4), each
shown from the side of whoever meets it, on real nodes over TLS where it takes one; SQLite and
PostgreSQL.

- After a live rotation of its signing key, the node co-signed the foreign logs' checkpoints and
  showed its witness verifier key (`GET /c2sp/tlog-witness/vkey`) with the key it was started with:
  the rotation reached its own log and its partners' witnessing, not its C2SP witnessing. A foreign
  log's operator who configured the vkey shown after the rotation got lines of an unknown key.
- A consistency proof that fails was audited and logged, at error level, as a split view of the log,
  although the route takes requests from anyone and the proof is the caller's, not signed by the
  log: anyone holding two public checkpoints of an honest log could raise split-view alarms against
  it. It is the caller's bad request now (422 still, as the specification gives); a checkpoint of the
  co-signed size with another root, both signed by the log, is still a split view.
- The client the node asks C2SP witnesses with read one buffer of the answer: an answer that came in
  pieces was cut, failed to parse, and the witness's cosignature was lost.
"""

from __future__ import annotations

import asyncio
import base64
import logging

import pytest
from aiohttp import web

from exchange.audit.tlog_witness import judge
from exchange.clock import timestamp
from exchange.config import TlogLogConfig, TlogWitnessConfig
from exchange.errors import PeerError
from exchange.node.tlog_client import MAX_ANSWER, HttpTlogClient
from exchange.protocol.rostermigration import propose
from exchange.protocol.rotation import rotate
from tests.conformance import kit
from tests.conftest import Federation, MakeFederation, Member, eventually, free_port
from tests.test_key_rotation import rotate_on_host
from tests.test_roster_gossip import CONVERGE, Authority, import_at, runs_on
from tests.test_tlog_witness_e2e import EM, TinyWitness, check_cosignature, node_vkey, post_text, start_node, vkey

NL = "nl-customs"
ORIGIN = "log.test/honest"
LOG_KEY = kit.seed_key("log.test/honest/ed25519")
LEAVES = [kit.leaf(f"entry {i}".encode()) for i in range(8)]


def std(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def signed_note(size: int, leaves: list[bytes] = LEAVES) -> str:
    """A checkpoint of the foreign log, signed by the log's key (c2sp.org/signed-note)."""
    text = f"{ORIGIN}\n{size}\n{std(kit.mth(leaves[:size]))}\n"
    raw = kit.key_id(ORIGIN, kit.SIG_ED25519, kit.raw_public(LOG_KEY)) + LOG_KEY.sign(text.encode())
    return f"{text}\n{EM} {ORIGIN} {std(raw)}\n"


def add_checkpoint(old: int, proof: list[bytes], note: str) -> bytes:
    return ("".join(f"{line}\n" for line in [f"old {old}", *map(std, proof), ""]) + note).encode()


def honest(old: int, size: int) -> bytes:
    """What the honest log sends: a proof from the size the witness holds."""
    return add_checkpoint(old, kit.proof(old, LEAVES[:size]) if old else [], signed_note(size))


LOGS = (TlogLogConfig(origin=ORIGIN, vkey=vkey(ORIGIN, kit.SIG_ED25519, kit.raw_public(LOG_KEY))),)


async def tlog_refusals(member: Member) -> list[tuple[int, str]]:
    """The refused add-checkpoint requests the node audited: (status, reason)."""
    entries = await member.service.audit.entries(limit=1000)
    return [(e["status"], e["reason"]) for e in entries if str(e.get("reason", "")).startswith("tlog-witness:")]


async def stored_size(member: Member) -> int | None:
    sizes = {w.origin: w.size for w in await member.service.audit.tlog_witnessing.witnessed()}
    return sizes.get(ORIGIN)


# -- 1. the node's witness key after a live rotation ---------------------------------------------------


async def test_after_a_rotation_the_node_cosigns_foreign_logs_with_its_new_key(
    make_federation: MakeFederation,
) -> None:
    fed = await start_node(make_federation, logs=LOGS)
    nl = fed[NL]
    name, before = await node_vkey(fed)
    status, answer, _ = await post_text(fed, honest(0, 2))
    assert status == 200
    check_cosignature(answer, honest(0, 2), name, before)

    # The federation's authority lists a new signing key of nl-customs, made on its own host.
    auth = Authority.of(fed)
    version1 = auth.migration()
    assert await import_at(nl.config, version1) == 1
    await eventually(runs_on(nl, 1), timeout=CONVERGE, what="version 1 at nl-customs")
    request = await rotate_on_host(nl, fed.folder, "signing")
    version2 = auth.sign(
        rotate(version1.roster, propose(version1.roster, timestamp(), version1.roster.expires), [request])
    )
    assert await import_at(nl.config, version2) == 2
    await eventually(runs_on(nl, 2), timeout=CONVERGE, what="version 2 at nl-customs")
    assert nl.service.keys.signing.kid == request.request.key.kid  # it switched keys, live

    # The foreign log's operator takes the vkey the node shows now: it is the key the roster lists.
    name_after, after = await node_vkey(fed)
    assert name_after == name
    assert after == nl.service.fed.verify_key(NL).raw != before

    # The log's next checkpoint is co-signed with that key, and the node still holds what it co-signed.
    status, answer, _ = await post_text(fed, honest(2, 5))
    assert status == 200, answer
    check_cosignature(answer, honest(2, 5), name, after)
    assert await stored_size(nl) == 5


# -- 2. a wrong proof is the caller's, a second root is the log's -------------------------------------


def test_only_another_root_of_the_same_size_is_judged_a_split_view() -> None:
    class Head:
        def __init__(self, size: int) -> None:
            self.size, self.root = size, kit.mth(LEAVES[:size])

    seen = (2, kit.mth(LEAVES[:2]))
    wrong = judge(2, [bytes(32)], Head(5), seen)
    assert wrong is not None and wrong.status == 422 and not wrong.split_view
    assert "split view" not in wrong.reason
    needless = judge(2, [bytes(32)], Head(2), seen)  # a proof between equal sizes
    assert needless is not None and needless.status == 422 and not needless.split_view
    forked = judge(2, [], Head(2), (2, bytes(32)))
    assert forked is not None and forked.status == 409 and forked.split_view and "split view" in forked.reason


async def test_anyone_can_send_a_wrong_proof_but_raises_no_split_view(
    make_federation: MakeFederation, caplog: pytest.LogCaptureFixture
) -> None:
    fed = await start_node(make_federation, logs=LOGS)
    nl = fed[NL]
    assert (await post_text(fed, honest(0, 2)))[0] == 200

    # Whoever holds the log's public checkpoints of 2 and 5 sends a wrong proof between them, and a
    # proof where none is needed; both notes are the log's own, validly signed.
    attacks = [
        add_checkpoint(2, [bytes(32), bytes(32)], signed_note(5)),
        add_checkpoint(2, [bytes(32)], signed_note(2)),
    ]
    with caplog.at_level(logging.INFO, logger="exchange.audit"):
        for body in attacks:
            status, answer, _ = await post_text(fed, body)
            assert status == 422, answer
            assert b"split view" not in answer
    assert await stored_size(nl) == 2  # nothing moved
    alarms = [r for r in caplog.records if r.levelno >= logging.ERROR or "split view" in r.getMessage()]
    assert alarms == [], alarms
    refused = await tlog_refusals(nl)
    assert [status for status, _ in refused] == [422, 422]
    assert not any("split view" in reason for _, reason in refused), refused

    # The honest log is not held up by it: its own proof from 2 is co-signed.
    assert (await post_text(fed, honest(2, 5)))[0] == 200

    # The log signs a second checkpoint of size 5 with another root: that is a split view, whoever
    # sends it, since the node holds the log's signed note of the first.
    forked = signed_note(5, [*LEAVES[:4], kit.leaf(b"forked"), *LEAVES[5:]])
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="exchange.audit"):
        status, _, _ = await post_text(fed, add_checkpoint(5, [], forked))
    assert status == 409
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "split view" in errors[0] and ORIGIN in errors[0], errors
    status, reason = (await tlog_refusals(nl))[-1]
    assert status == 409 and "split view" in reason, reason
    assert await stored_size(nl) == 5


# -- 3. a witness's answer in pieces -------------------------------------------------------------------

PAUSE = 0.2  # seconds between the pieces of an answer: the client reads the first before the second comes


async def answer_in_pieces(request: web.Request, body: bytes, pieces: int, status: int = 200) -> web.StreamResponse:
    """Send `body` in `pieces` chunks (chunked transfer encoding), each after a pause, as a slow
    witness or network does."""
    resp = web.StreamResponse(status=status, headers={"Content-Type": "text/plain; charset=utf-8"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    step = -(-len(body) // pieces)
    for at in range(0, len(body), step):
        await resp.write(body[at : at + step])
        await asyncio.sleep(PAUSE)
    await resp.write_eof()
    return resp


class SlowWitness(TinyWitness):
    """The C2SP witness of tests/test_tlog_witness_e2e.py, whose cosignature line comes in two pieces."""

    async def handle_slowly(self, request: web.Request) -> web.StreamResponse:
        answer = await self.handle(request)
        if answer.status != 200:
            return answer
        assert isinstance(answer.body, bytes)
        return await answer_in_pieces(request, answer.body, 2)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/tiny/add-checkpoint", self.handle_slowly)
        return app


async def test_a_c2sp_witness_answering_in_pieces_gets_its_cosignature_kept(make_federation: MakeFederation) -> None:
    witness = SlowWitness("witness.test/slow", {})
    runner = web.AppRunner(witness.app())
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        configured = TlogWitnessConfig(url=f"http://127.0.0.1:{port}/tiny", vkey=vkey(witness.name, 4, witness.public))
        fed: Federation = await start_node(make_federation, witnesses=(configured,))
        audit = fed[NL].service.audit
        witness.logs[f"exchange/audit/{NL}"] = audit.fed.verify_key(NL).raw
        assert (await audit.witness.tick())["c2sp"] == {witness.name: "cosigned"}
        latest = await audit.keeper.latest()
        assert latest is not None and witness.name in latest.witnesses
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(("size", "kept"), [(MAX_ANSWER, True), (MAX_ANSWER + 1, False)])
async def test_the_client_reads_an_answer_in_pieces_up_to_its_bound(size: int, kept: bool) -> None:
    body = b"x" * (size - 1) + b"\n"

    async def handle(request: web.Request) -> web.StreamResponse:
        return await answer_in_pieces(request, body, 4)

    app = web.Application()
    app.router.add_post("/add-checkpoint", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}/add-checkpoint"
    try:
        client = HttpTlogClient(timeout_seconds=10)
        if kept:
            reply = await client.post(url, b"old 0\n\n", None)
            assert (reply.status, reply.body) == (200, body)
        else:
            with pytest.raises(PeerError, match="more than"):
                await client.post(url, b"old 0\n\n", None)
    finally:
        await runner.cleanup()
