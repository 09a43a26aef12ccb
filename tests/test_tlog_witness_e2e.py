"""C2SP tlog-witness with a running node over real TLS (issue 16, must-show 2; docs/audit.md, section 4).

- `TinyWitness` is a witness written in this file from the text of c2sp.org/tlog-witness,
  c2sp.org/tlog-cosignature and c2sp.org/signed-note only: hashlib and `cryptography`, no
  `exchange` import. A running node pushes its checkpoints to it (`tlog_witnesses` in its
  configuration), verifies the cosignature/v1 line it returns and keeps it next to its partners'
  cosignatures, where the node's own checkpoint check counts it; a forged line is refused and kept
  nowhere.
- The node as a witness of foreign C2SP logs (`tlog_logs`): the add-checkpoint requests of
  litewitness's published test script (FiloSottile/litetlog, cmd/litewitness/testdata/
  litewitness.txt, commit 3195373f7620fde5e62977689fbaabd0e43e255d: a sigsum log of 1, 3 and 5
  entries with fake node hashes) are replayed against the node's route with the statuses they
  expect, and a real sum.golang.org checkpoint (litewitness's sumdb.txt, `go.sum database tree`
  at size 35225469) is co-signed. Every refusal leaves what the node stored unchanged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from exchange.audit.checkpoint import C2SP_MARK
from exchange.audit.log import KeyRing, LogVerifier
from exchange.cli.audit import keys_of
from exchange.config import NodeConfig, TlogLogConfig, TlogWitnessConfig
from exchange.errors import ConfigError
from exchange.keystore import read_file
from exchange.node.tls import client_context
from tests.conftest import Federation, MakeFederation, free_port

EM = "\u2014"

# -- a witness from the C2SP text alone ----------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def key_id(name: str, sig_type: int, public: bytes) -> bytes:
    """signed-note: SHA-256(key name || 0x0A || signature type || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + bytes([sig_type]) + public).digest()[:4]


def vkey(name: str, sig_type: int, public: bytes) -> str:
    """signed-note: a verifier key, `<name>+<hex key ID>+<base64(type || key)>`."""
    return f"{name}+{key_id(name, sig_type, public).hex()}+{b64(bytes([sig_type]) + public)}"


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def consistent(m: int, n: int, proof: list[bytes], old: bytes, new: bytes) -> bool:
    """RFC 9162, 2.1.4.2: verify a consistency proof from size m to size n."""
    if m == n:
        return not proof and old == new
    if m == 0 or m > n:
        return False
    if m & (m - 1) == 0:  # m a power of two: the old root is the first node of the path
        proof = [old, *proof]
    if not proof:
        return False
    fn, sn = m - 1, n - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = proof[0]
    for c in proof[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and fr == old and sr == new


class TinyWitness:
    """c2sp.org/tlog-witness `add-checkpoint`, answering with a cosignature/v1 line (type 0x04)."""

    def __init__(self, name: str, logs: dict[str, bytes]) -> None:
        self.name = name
        self.key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"tiny witness " + name.encode()).digest())
        self.public = self.key.public_key().public_bytes_raw()
        self.logs = logs  # origin -> Ed25519 public key of the log; the key name is the origin
        self.seen: dict[str, tuple[int, bytes]] = {}
        self.forge: str | None = None  # "signature": a bad signature; "key": a line of another key
        self.requests: list[tuple[int, int]] = []  # (old size, checkpoint size) of each request

    async def handle(self, request: web.Request) -> web.Response:
        head, sep, note = (await request.read()).decode("utf-8").partition("\n\n")
        lines = head.split("\n")
        if not sep or not lines[0].startswith("old "):
            return web.Response(status=400, text="malformed\n")
        old, proof = int(lines[0][4:]), [base64.b64decode(line, validate=True) for line in lines[1:]]
        text, _, sigs = note.rpartition("\n\n")
        text += "\n"
        origin, size_line, root_line = text.split("\n")[:3]
        size, root = int(size_line), base64.b64decode(root_line, validate=True)
        self.requests.append((old, size))
        if origin not in self.logs:
            return web.Response(status=404, text="unknown log\n")
        public = self.logs[origin]
        verified = False
        for line in sigs.rstrip("\n").split("\n"):
            _, name, sig = line.split(" ")
            raw = base64.b64decode(sig, validate=True)
            if name == origin and raw[:4] == key_id(origin, 0x01, public):
                Ed25519PublicKey.from_public_bytes(public).verify(raw[4:], text.encode())
                verified = True
        if not verified:
            return web.Response(status=403, text="no trusted signature\n")
        if old > size:
            return web.Response(status=400, text="old size beyond the checkpoint\n")
        latest, latest_root = self.seen.get(origin, (0, b""))
        if old != latest:
            return web.Response(status=409, body=f"{latest}\n".encode(), content_type="text/x.tlog.size")
        if old and not consistent(old, size, proof, latest_root, root):
            return web.Response(status=422, text="bad consistency proof\n")
        self.seen[origin] = (size, root)
        now = int(time.time())  # its own clock: a log keeps no cosignature dated off its own
        message = f"cosignature/v1\ntime {now}\n{text}".encode()
        signer = Ed25519PrivateKey.generate() if self.forge == "signature" else self.key
        name = f"{self.name}.other" if self.forge == "key" else self.name
        kid = key_id(name, 0x04, self.public)
        line = f"{EM} {name} {b64(kid + now.to_bytes(8, 'big') + signer.sign(message))}\n"
        return web.Response(status=200, text=line)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/tiny/add-checkpoint", self.handle)
        return app


# -- the node's checkpoints co-signed by the tiny witness ----------------------------------------------


def toml_entries(table: str, entries: tuple[TlogWitnessConfig | TlogLogConfig, ...]) -> str:
    """The entries as an operator writes them in the node file (docs/operations.md)."""
    return "".join(
        f"\n[[node.{table}]]\n"
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in e.model_dump(exclude_none=True).items())
        for e in entries
    )


async def start_node(
    make_federation: MakeFederation,
    witnesses: tuple[TlogWitnessConfig, ...] = (),
    logs: tuple[TlogLogConfig, ...] = (),
) -> Federation:
    """nl-customs alone, with the C2SP entries written into its node file and read back from it."""
    fed = await make_federation(
        nodes={"nl-customs": ("NL", "customs")},
        start=False,
        # rounds only when the test runs one; every refused request gets an entry of its own
        options={"audit_checkpoint_seconds": 3600, "refusals_exact_per_address": 1000},
    )
    member = fed["nl-customs"]
    path = fed.folder / "nl-customs.toml"
    path.write_text(path.read_text() + toml_entries("tlog_witnesses", witnesses) + toml_entries("tlog_logs", logs))
    member.config = NodeConfig.load(path, environ={})
    assert (member.config.tlog_witnesses, member.config.tlog_logs) == (witnesses, logs)
    await fed.start("nl-customs")
    return fed


async def grow(fed: Federation) -> None:
    """Add entries to the node's audit log: a refused request is audited."""
    status, *_ = await post_text(fed, b"not an add-checkpoint body")
    assert status == 400


@contextlib.asynccontextmanager
async def witnessed_node(make_federation: MakeFederation) -> AsyncIterator[tuple[TinyWitness, Federation, str]]:
    """A TinyWitness on a free port, nl-customs configured to push its checkpoints to it, and the
    witness's URL."""
    port = free_port()
    witness = TinyWitness("witness.test/tiny", {})
    runner = web.AppRunner(witness.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        configured = TlogWitnessConfig(
            url=f"http://127.0.0.1:{port}/tiny", vkey=vkey(witness.name, 0x04, witness.public)
        )
        fed = await start_node(make_federation, witnesses=(configured,))
        witness.logs["exchange/audit/nl-customs"] = fed["nl-customs"].service.fed.verify_key("nl-customs").raw
        yield witness, fed, configured.url
    finally:
        await runner.cleanup()


async def test_a_c2sp_witness_cosigns_a_running_nodes_checkpoints(make_federation: MakeFederation) -> None:
    async with witnessed_node(make_federation) as (witness, fed, url):
        service = fed["nl-customs"].service
        audit = service.audit

        # First contact: old size 0, no proof; the node verifies the line and keeps it.
        first = (await audit.witness.tick())["c2sp"]
        assert first == {witness.name: "cosigned"}
        cp = await audit.keeper.latest()
        assert cp is not None
        assert witness.requests == [(0, cp.size)]
        assert cp.witnesses == [witness.name]
        # the node's check counts it, named as a C2SP witness (never taken for a roster node's cosignature)
        assert audit.check_checkpoint(cp).witnesses == [C2SP_MARK + witness.name]
        # ... and so does an auditor's, with the keys of the node file (`exchange audit verify --node`)
        verifier = LogVerifier("nl-customs", await asyncio.to_thread(keys_of, fed.folder / "nl-customs.toml"))
        assert verifier.checkpoint(cp.full_note()).witnesses == (C2SP_MARK + witness.name,)
        assert (
            LogVerifier("nl-customs", KeyRing.from_federation(service.fed)).checkpoint(cp.full_note()).witnesses == ()
        )

        # The log grows: the next push proves consistency from the size the witness co-signed.
        await grow(fed)
        assert (await audit.witness.tick())["c2sp"] == {witness.name: "cosigned"}
        second = await audit.keeper.latest()
        assert second is not None
        assert second.size > cp.size and witness.requests[-1] == (cp.size, second.size)

        # The witness saw a checkpoint the node does not know it saw: 409 names it, the node proves
        # from there.
        await grow(fed)
        third = await audit.keeper.checkpoint()
        assert third is not None
        proof = await audit.keeper.consistency(second.size, third.size)
        body = "".join(f"{line}\n" for line in [f"old {second.size}", *map(b64, proof), ""]) + third.note
        async with aiohttp.ClientSession() as session, session.post(url + "/add-checkpoint", data=body) as r:
            assert r.status == 200
        await grow(fed)
        assert (await audit.witness.tick())["c2sp"] == {witness.name: "cosigned"}
        fourth = await audit.keeper.latest()
        assert fourth is not None
        assert witness.requests[-2:] == [(second.size, fourth.size), (third.size, fourth.size)]
        assert witness.name in fourth.witnesses

        # Forged answers: a bad signature, and a line of a key that is not the configured one.
        for forge in ("signature", "key"):
            witness.forge = forge
            await grow(fed)
            outcome = (await audit.witness.tick())["c2sp"][witness.name]
            assert outcome.startswith("BadSignature"), outcome
            latest = await audit.keeper.latest()
            assert latest is not None
            assert witness.name not in latest.witnesses
            assert await audit.keeper.cosigned_size(witness.name) == fourth.size


async def test_a_witness_that_named_a_size_beyond_the_log_is_asked_again_once_it_recovers(
    make_federation: MakeFederation,
) -> None:
    """A witness that once named, in a 409, a size beyond the log's (its own error, or a reset) was
    remembered so: every later round answered "refused" without asking it, unlogged and uncounted,
    until the node restarted (a read-only review). The refusal is now a counted failure, and the
    next round asks the witness again."""
    async with witnessed_node(make_federation) as (witness, fed, _):
        audit = fed["nl-customs"].service.audit
        origin = "exchange/audit/nl-customs"
        witness.seen[origin] = (10**6, b"\0" * 32)  # a size this log never reached
        refused = (await audit.witness.tick())["c2sp"][witness.name]
        assert "beyond" in refused, refused
        assert (witness.name, "push", "refused") in {k[:3] for k in audit.tlog_push.failures.counts()}
        asked = len(witness.requests)

        witness.seen.pop(origin)  # the witness recovers (its state reset)
        await grow(fed)
        assert (await audit.witness.tick())["c2sp"] == {witness.name: "cosigned"}
        assert len(witness.requests) > asked  # before: "refused" again, the witness never asked


# -- the node as a witness of foreign C2SP logs ------------------------------------------------------

SIGSUM_KEY = bytes.fromhex("ffdc2d4d98e4124d3feaf788c0c2f9abfd796083d1f0495437f302ec79cf100f")
SIGSUM = "sigsum.org/v1/tree/4d6d8825a6bb689d459628312889dfbb0bcd41b5211d9e1ce768b0ff0309e562"
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_REQUEST = (
    "old 0\n\ngo.sum database tree\n35225469\nvt5T6GaLCXvyHFl9VUvvItR43XZxfLgftEcTyO3eJCQ=\n\n"
    f"{EM} sum.golang.org Az3grpukl5AXaVfYkLiDGORx/DN2nlcS5kZHR5uYOBV2KA2HgXpD+gu9HHONebHLAyaKbbTM75QTtPy"
    "dhKCExixSfwQ=\n"
)


def sigsum(old: int, proof: list[str], origin: str, size: int, root: str, sig: str) -> bytes:
    lines = [f"old {old}", *proof, "", origin, str(size), root, "", f"{EM} {origin} {sig}"]
    return ("\n".join(lines) + "\n").encode()


SIG1 = "UgIom7fPZTqpxWWhyjWduBvTvGVqsokMbqTArsQilegKoFBJQjUFAmQ0+YeSPM3wfUQMFSzVnnNuWRTYrajXpNUbIQY="
SIG3 = "UgIom2VbtIcdFbwFAy1n7s6IkAxIY6J/GQOTuZF2ORV39d75cbAj2aQYwyJre36kezNobZs4SUUdrcawfAB8WVrx6go="
SIG5 = "UgIomw/EOJmWi0i1FQsOj+etB7F8IccFam/jgd6wzRns4QPVmyEZtdvl1U2KEmLOZ/ASRcWJi0tW90dJWAShei7sDww="
ROOT1 = "KgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
ROOT3 = "RcCI1Nk56ZcSmIEfIn0SleqtV7uvrlXNccFx595Iwl0="
ROOT5 = "QrtXrQZCCvpIgsSmOsah7HdICzMLLyDfxToMql9WTjY="
P1_3 = ["KgEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "KgIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="]
P1_5 = [
    "KgEAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    "+fUDV+k970B4I3uKrqJM4aP1lloPZP8mvr2Z4wRw2LI=",
    "KgQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
]
P3_5 = [
    "KgIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    "KgMAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    "wgiIFdZfYNv6WU1OllBKsWnLYIS/DBMqt8Uh/S4OukE=",
    "KgQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
]
OTHER = SIGSUM[:-1] + "3"
OTHER_SIG3 = SIG3  # litewitness signs the unknown-origin request with the same bytes
BAD_SIG3 = SIG3[:-2] + "x="  # litewitness's "invalid signature" request: non-canonical base64
FLIPPED_SIG3 = b64(base64.b64decode(SIG3)[:-1] + bytes([base64.b64decode(SIG3)[-1] ^ 1]))  # a canonical bad one

# (request, expected status, expected body or None, stored size of the sigsum log afterwards)
LITEWITNESS = [
    (sigsum(0, [], SIGSUM, 1, ROOT1, SIG1), 200, None, 1),
    # litewitness answers 403 (Go reads the padding bits loosely); the node reads base64 strictly,
    # as signed-note's canonical encoding, and refuses the body as malformed.
    (sigsum(1, P1_3, SIGSUM, 3, ROOT3, BAD_SIG3), 400, None, 1),
    (sigsum(1, P1_3, SIGSUM, 3, ROOT3, FLIPPED_SIG3), 403, None, 1),
    # litewitness (an older revision of the specification) answers 403 here; the text now says 404.
    (sigsum(1, P1_3, OTHER, 3, ROOT3, OTHER_SIG3), 404, None, 1),
    (sigsum(1, [], SIGSUM, 3, ROOT3, SIG3), 422, None, 1),
    (sigsum(1, [P1_3[0], P1_3[1][:-4] + "ABA="], SIGSUM, 3, ROOT3, SIG3), 422, None, 1),
    (sigsum(1, P1_3, SIGSUM, 3, ROOT3, SIG3), 200, None, 3),
    (sigsum(1, P1_5, SIGSUM, 5, ROOT5, SIG5), 409, b"3\n", 3),
    (sigsum(3, P3_5, SIGSUM, 5, ROOT5, SIG5), 200, None, 5),
    (sigsum(0, [], SIGSUM, 5, ROOT5, SIG5), 409, b"5\n", 5),
    (sigsum(5, [], SIGSUM, 3, ROOT3, SIG3), 400, None, 5),  # a rollback: old size beyond the checkpoint
    (sigsum(3, [], SIGSUM, 3, ROOT3, SIG3), 409, b"5\n", 5),  # the same rollback from the size it had
    (b"old 0\nnot a checkpoint", 400, None, 5),
]


async def post_text(fed: Federation, body: bytes) -> tuple[int, bytes, str]:
    """POST an add-checkpoint body to the node over TLS, as any client without a certificate does."""
    member = fed["nl-customs"]
    ctx = client_context(read_file(member.config.keys_dir / "tls.crt").decode())
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.post(member.config.endpoint + "/c2sp/tlog-witness/add-checkpoint", data=io.BytesIO(body)) as resp,
    ):
        return resp.status, await resp.read(), resp.content_type


async def node_vkey(fed: Federation) -> tuple[str, bytes]:
    member = fed["nl-customs"]
    ctx = client_context(read_file(member.config.keys_dir / "tls.crt").decode())
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.get(member.config.endpoint + "/c2sp/tlog-witness/vkey") as resp,
    ):
        name, kid, key = (await resp.text()).strip().split("+", 2)
    raw = base64.b64decode(key)
    assert raw[0] == 0x04 and key_id(name, 0x04, raw[1:]).hex() == kid
    return name, raw[1:]


def check_cosignature(answer: bytes, request: bytes, name: str, public: bytes) -> None:
    """tlog-cosignature: the line signs `cosignature/v1\\ntime <t>\\n` and the checkpoint text."""
    text = request.decode().split("\n\n")[1] + "\n"
    (line,) = answer.decode().splitlines()
    dash, who, sig = line.split(" ")
    raw = base64.b64decode(sig, validate=True)
    assert (dash, who, raw[:4]) == (EM, name, key_id(name, 0x04, public))
    message = f"cosignature/v1\ntime {int.from_bytes(raw[4:12], 'big')}\n{text}".encode()
    Ed25519PublicKey.from_public_bytes(public).verify(raw[12:], message)


def foreign_logs(race: bytes) -> tuple[TlogLogConfig, ...]:
    return (
        TlogLogConfig(origin=SIGSUM, vkey=vkey(SIGSUM, 0x01, SIGSUM_KEY)),
        TlogLogConfig(origin="go.sum database tree", vkey=SUMDB_VKEY),
        TlogLogConfig(origin="log.test/race", vkey=vkey("log.test/race", 0x01, race)),
    )


async def test_the_node_witnesses_foreign_c2sp_logs(make_federation: MakeFederation) -> None:
    race_key = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"log.test/race").digest())
    fed = await start_node(make_federation, logs=foreign_logs(race_key.public_key().public_bytes_raw()))
    witnessing = fed["nl-customs"].service.audit.tlog_witnessing
    name, public = await node_vkey(fed)
    assert name == "exchange/witness/nl-customs"

    async def stored() -> dict[str, int]:
        return {w.origin: w.size for w in await witnessing.witnessed()}

    for i, (body, status, expected, size) in enumerate(LITEWITNESS):
        answer_status, answer, content_type = await post_text(fed, body)
        assert answer_status == status, (i, answer)
        if expected is not None:
            assert (answer, content_type) == (expected, "text/x.tlog.size")
        if status == 200:
            check_cosignature(answer, body, name, public)
        assert (await stored()).get(SIGSUM) == size, i

    # A real checkpoint of sum.golang.org, first contact; then the same with a signature changed.
    status, answer, _ = await post_text(fed, SUMDB_REQUEST.encode())
    assert status == 200
    check_cosignature(answer, SUMDB_REQUEST.encode(), name, public)
    forged = SUMDB_REQUEST.replace("Az3grpukl5AX", "Az3grpukl5AY").encode()
    assert (await post_text(fed, forged))[0] == 403
    assert (await stored())["go.sum database tree"] == 35225469

    # Two requests race from one size to two different checkpoints: exactly one advances the log.
    leaves = [hashlib.sha256(b"\x00" + bytes([i])).digest() for i in range(3)]
    roots = {1: leaves[0], 2: node_hash(leaves[0], leaves[1]), 3: node_hash(node_hash(leaves[0], leaves[1]), leaves[2])}

    def race(old: int, size: int) -> bytes:
        root = roots[size]
        text = f"log.test/race\n{size}\n{b64(root)}\n"
        kid = key_id("log.test/race", 0x01, race_key.public_key().public_bytes_raw())
        proof = {(1, 2): [leaves[1]], (1, 3): [leaves[1], leaves[2]]}.get((old, size), [])
        head = "".join(f"{line}\n" for line in [f"old {old}", *map(b64, proof), ""])
        return (head + text + f"\n{EM} log.test/race {b64(kid + race_key.sign(text.encode()))}\n").encode()

    assert (await post_text(fed, race(0, 1)))[0] == 200
    results = await asyncio.gather(post_text(fed, race(1, 2)), post_text(fed, race(1, 3)))
    statuses = sorted(r[0] for r in results)
    assert statuses == [200, 409], results
    winner = 2 if results[0][0] == 200 else 3
    loser = next(r for r in results if r[0] == 409)
    assert loser[1:] == (f"{winner}\n".encode(), "text/x.tlog.size")
    assert (await stored())["log.test/race"] == winner

    # An auditor sees what the node co-signed of each foreign log.
    status, view, _ = await fed["nl-customs"].api("GET", "/api/v1/audit/witnessed", user="auditor")
    assert status == 200
    shown = {log["origin"]: log["size"] for log in view["c2sp_logs"]}
    assert shown == {SIGSUM: 5, "go.sum database tree": 35225469, "log.test/race": winner}

    # Each refusal was audited as a refused request, with its status and why.
    entries = await fed["nl-customs"].service.audit.entries(limit=1000)
    refused = [e for e in entries if "tlog-witness" in str(e.get("reason"))]
    assert sorted(e["status"] for e in refused) == [400, 400, 400, 403, 403, 404, 409, 409, 409, 409, 422, 422]


async def test_a_malformed_verifier_key_stops_the_node_at_start(make_federation: MakeFederation) -> None:
    fed = await make_federation(nodes={"nl-customs": ("NL", "customs")}, start=False)
    member = fed["nl-customs"]
    witness_vkey = vkey("witness.test/w", 0x04, bytes(range(32)))
    bad: list[dict[str, Any]] = [
        {"tlog_logs": (TlogLogConfig(origin="x", vkey="nope"),)},
        {"tlog_logs": (TlogLogConfig(origin="x", vkey=SUMDB_VKEY.replace("033de0ae", "033de0af")),)},
        {"tlog_logs": (TlogLogConfig(origin="x", vkey=SUMDB_VKEY + "A"),)},
        {"tlog_logs": (TlogLogConfig(origin="x", vkey=witness_vkey),)},  # a witness key for a log
        # a federation member's log, as a foreign one: co-signed under a key the roster does not hold
        {
            "tlog_logs": (
                TlogLogConfig(origin="exchange/audit/gb-avsec", vkey=vkey("exchange/audit/gb-avsec", 1, bytes(32))),
            )
        },
        {"tlog_witnesses": (TlogWitnessConfig(url="https://w.test", vkey=SUMDB_VKEY),)},  # a log key
        {"tlog_witnesses": (TlogWitnessConfig(url="https://w.test", vkey=vkey("exchange/witness/x", 4, bytes(32))),)},
    ]
    config = member.config
    for update in bad:
        member.config = config.model_copy(update=update)
        with pytest.raises(ConfigError):
            await fed.start("nl-customs")
