"""Fan-out of one bulletin to K readers: envelope v1 (a wrap per reader per bulletin) against v2 (epoch keys).

Run: .venv/bin/python bench/fanout.py [--readers 2,10,50,200] [--rounds 15] [--bulletins-per-epoch 100]

Protocol core only, in this process: a roster of K nodes and a channel whose K members all read
and post, built from fixed seeds. For each K it prints, v1 and v2 side by side (medians of the
rounds, wall time and this process's CPU time):

  build      the author's envelope build (v1: encrypt, K HPKE wraps, sign; v2: HKDF, encrypt, sign)
  size       the envelope's wire bytes
  epoch      v2 only: the owner's cost of one epoch record (K wraps, sign), X25519 wraps and all-hybrid
             (ML-KEM-768 + X25519) wraps, and the record's size; amortised over B bulletins per epoch
  author     the author's crypto CPU per bulletin (v2: the build plus the amortised epoch)
  upload     the author's upload per bulletin, pushing to the K - 1 other readers (v2: plus the
             owner's epoch record to K - 1 members, amortised over B)
  reader     one reader's verify + open (v2: the epoch key is opened once per epoch, amortised)

This bench measures the envelope crypto only; the author's total CPU per bulletin, with receipts
and audit entries, on wired nodes is bench/fanout_wired.py's. It prints the 1-minute load average
with each row, since the machine is shared. It never asserts on time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # tests.vectors, when run from elsewhere

from exchange.crypto import HybridDecryptionKey, SigningKey, hybrid_supported
from exchange.crypto.content import os_random
from exchange.crypto.epoch import WrapKey
from exchange.model import Bulletin, NodeId, Roster
from exchange.protocol.channel import ChannelState, apply_event, sign_acceptance, sign_event
from exchange.protocol.envelope import build_envelope_bytes, open_envelope, parse_envelope, verify_envelope
from exchange.protocol.envelope_v2 import (
    build_envelope_v2,
    envelope_v2_bytes,
    open_envelope_v2,
    parse_envelope_v2,
    verify_envelope_v2,
)
from exchange.protocol.epoch import make_epoch, open_epoch, roster_wrap_keys
from exchange.protocol.roster import Federation, sign_roster
from tests.vectors.make_vectors import BULLETIN, decryption_key, roster_entry, seed, signing_key, tls_cert

CREATED = "2025-03-14T09:26:53.589Z"


def federation(k: int) -> tuple[Federation, ChannelState]:
    """K nodes (fixed test seeds) and a channel in which all K read and post."""
    ids = [f"node-{i:03d}" for i in range(k)]
    entries = [roster_entry({"id": n, "name": n, "country": "NL", "agency": "customs"}, tls_cert(n)) for n in ids]
    authority = signing_key("authority")
    roster = Roster.model_validate(
        {
            "v": 1,
            "federation": "fanout bench",
            "version": 1,
            "issued": CREATED,
            "authority_kid": authority.kid,
            "nodes": entries,
        }
    )
    fed = Federation.verify(sign_roster(roster, authority), authority.verify_key)
    owner = ids[0]
    key = signing_key(owner)
    state: ChannelState | None = None

    def step(change: dict[str, Any]) -> None:
        nonlocal state
        event = sign_event(
            channel="fanout",
            owner=owner,
            pos=state.pos + 1 if state else 0,
            prev=state.hash if state else None,
            at=CREATED,
            change=change,
            key=key,
        )
        state = apply_event(state, event, fed)

    step(
        {
            "type": "create",
            "title": "Fan-out",
            "purpose": "",
            "policy": {"agencies": ["customs"]},
            "default_handling": {"tlp": "AMBER", "no_onward_sharing": False},
            "ends": None,
        }
    )
    for n in ids[1:]:
        step({"type": "invite", "node": n, "rights": ["post", "read"]})
        assert state is not None
        acceptance = sign_acceptance("fanout", n, state.hash, signing_key(n))
        step({"type": "accept", "acceptance": acceptance.model_dump(mode="json")})
    assert state is not None
    return fed, state


def median(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median wall and CPU seconds of `fn` over `rounds` calls (after one warm-up)."""
    fn()
    walls, cpus = [], []
    for _ in range(rounds):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.2f}"


def kb(n: float) -> str:
    return f"{n / 1000:9.1f}"


def run(k: int, rounds: int, per_epoch: int) -> dict[str, float]:
    fed, state = federation(k)
    author = NodeId(state.owner)
    key: SigningKey = signing_key(author)
    bulletin = Bulletin.model_validate(BULLETIN)
    readers = [(n, fed.encryption_key(n)) for n in state.readers]
    me = state.readers[-1]

    def v1() -> bytes:
        built = build_envelope_bytes(
            bulletin.payload_bytes,
            bulletin.handling,
            state=state,
            author=author,
            key=key,
            seq=1,
            readers=readers,
            created=CREATED,
        )
        return bytes(built.wire)

    v1_wall, v1_cpu = median(v1, rounds)
    wire1 = v1()

    def read1() -> None:
        env = parse_envelope(wire1)
        bid = verify_envelope(env, fed, state)
        open_envelope(env, bid, NodeId(me), decryption_key(me))

    r1_wall, _ = median(read1, rounds)

    x_keys: dict[str, WrapKey] = {n: fed.encryption_key(n) for n in state.readers}
    ids = roster_wrap_keys(fed)
    epoch_rounds = max(3, rounds // 3)

    def epoch_x() -> Any:
        return make_epoch(state, n=0, prev=None, keys=x_keys, owner_key=key, created=CREATED)

    ex_wall, ex_cpu = median(epoch_x, epoch_rounds)
    record, epoch_key = epoch_x()
    record_x = len(record.model_dump_json())
    eh_wall = eh_cpu = float("nan")
    record_h = 0
    if hybrid_supported():
        hybrid: dict[str, WrapKey] = {n: HybridDecryptionKey(seed(f"{n}/xwing")).public for n in state.readers}
        h_keys: dict[str, WrapKey] = dict(hybrid)

        def epoch_h() -> Any:
            return make_epoch(state, n=0, prev=None, keys=h_keys, owner_key=key, created=CREATED)

        eh_wall, eh_cpu = median(epoch_h, epoch_rounds)
        record_h = len(epoch_h()[0].model_dump_json())

    def v2() -> bytes:
        env = build_envelope_v2(
            bulletin,
            state=state,
            epoch=record,
            epoch_key=epoch_key,
            author=author,
            key=key,
            seq=1,
            created=CREATED,
            rng=os_random,
        )
        return envelope_v2_bytes(env)

    v2_wall, v2_cpu = median(v2, rounds)
    wire2 = v2()
    mine = open_epoch(record, me, decryption_key(me))

    def read2() -> None:
        env = parse_envelope_v2(wire2)
        verify_envelope_v2(env, fed, state, record, ids)
        open_envelope_v2(env, mine)

    r2_wall, _ = median(read2, rounds)
    unwrap_wall, _ = median(lambda: open_epoch(record, me, decryption_key(me)), rounds)
    return {
        "k": k,
        "load": os.getloadavg()[0],
        "v1_build": v1_wall,
        "v1_cpu": v1_cpu,
        "v1_size": len(wire1),
        "v1_upload": len(wire1) * (k - 1),
        "v1_read": r1_wall,
        "v2_build": v2_wall,
        "v2_cpu": v2_cpu,
        "v2_size": len(wire2),
        "epoch_x": ex_wall,
        "epoch_x_cpu": ex_cpu,
        "epoch_h": eh_wall,
        "epoch_h_cpu": eh_cpu,
        "record_x": record_x,
        "record_h": record_h,
        "v2_author_cpu": v2_cpu + ex_cpu / per_epoch,
        "v2_author_cpu_h": v2_cpu + eh_cpu / per_epoch,
        "v2_upload": len(wire2) * (k - 1) + record_x * (k - 1) / per_epoch,
        "v2_read": r2_wall + unwrap_wall / per_epoch,
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--readers", default="2,10,50,200")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--bulletins-per-epoch", type=int, default=100, dest="per_epoch")
    args = parser.parse_args(argv)
    print(
        "envelope crypto only (no receipts, no audit, no storage); "
        f"epochs amortised over B = {args.per_epoch} bulletins"
    )
    print(f"hybrid suite available: {hybrid_supported()}; times in ms (median of {args.rounds}), sizes in KB")
    head = (
        f"{'K':>4} {'load':>5} | {'v1 build':>8} {'v1 size':>9} {'v1 up':>9} {'v1 read':>8} | "
        f"{'v2 build':>8} {'v2 size':>9} {'epoch X':>8} {'epoch H':>8} {'rec X':>9} {'rec H':>9} "
        f"{'author X':>8} {'author H':>8} {'v2 up':>9} {'v2 read':>8}"
    )
    print(head)
    print("-" * len(head))
    for k in (int(x) for x in args.readers.split(",")):
        r = run(k, args.rounds, args.per_epoch)
        print(
            f"{k:>4} {r['load']:5.2f} | {ms(r['v1_build'])} {kb(r['v1_size'])} {kb(r['v1_upload'])} "
            f"{ms(r['v1_read'])} | {ms(r['v2_build'])} {kb(r['v2_size'])} {ms(r['epoch_x'])} {ms(r['epoch_h'])} "
            f"{kb(r['record_x'])} {kb(r['record_h'])} {ms(r['v2_author_cpu'])} {ms(r['v2_author_cpu_h'])} "
            f"{kb(r['v2_upload'])} {ms(r['v2_read'])}",
            flush=True,
        )
    print(
        "author X/H: v2 build CPU + one X25519 / all-hybrid epoch's CPU / B. v1's author CPU is its build. "
        "v2 up: envelope x (K - 1) + X25519 epoch record x (K - 1) / B."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
