"""Canonical JSON on the project's real objects: the C fast path of `canonical_json` against rfc8785.

Run: .venv/bin/python bench/canonical.py [--repeat R] [--seconds S]

The objects are built the way the node builds them (`model_dump(mode="json")` of the models, the
golden vectors' keys and values): an envelope header (2 and 10 recipients), a bulletin's payload
without attachments and with 2 MiB of them, a receipt, a channel event and an audit entry. For
each it checks that `canonical_json` gives the pure-Python rfc8785 package's bytes and shows
which path it took, then times both: each figure is the best of R rounds of about S seconds, in
µs per call (about 10 s in all with the defaults). It prints the machine's load average before
and after; it prints figures and never asserts on time.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from functools import partial
from importlib.metadata import version
from pathlib import Path
from typing import Any

import rfc8785

from exchange.crypto import b64e, canonical_json, strict_loads
from exchange.crypto.encoding import fast_canonical_json
from exchange.model import MAX_ATTACHMENT_BYTES, Bulletin, ChannelEvent, EnvelopeHeader, Receipt

VECTORS = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "envelope-v1.json"


def objects() -> dict[str, Any]:
    """The objects the node canonicalises, named."""
    vectors = strict_loads(VECTORS.read_bytes())
    inputs, outputs = vectors["inputs"], vectors["outputs"]
    header = EnvelopeHeader.model_validate(outputs["envelope"]["header"]).model_dump(mode="json")
    ten = dict(header, recipients=[{"node": f"node-{i:02d}", "kid": f"{i:016x}"} for i in range(10)])
    bulletin = Bulletin.model_validate(inputs["bulletin"])
    per_file = MAX_ATTACHMENT_BYTES // 4
    attached = Bulletin.model_validate(
        {
            **inputs["bulletin"],
            "attachments": [
                {"name": f"x-ray-{i}.png", "media_type": "image/png", "data": b64e(os.urandom(per_file))}
                for i in range(4)
            ],
        }
    )
    receipt = Receipt.model_validate(outputs["receipt"]["signed"]).model_dump(mode="json")
    events = [ChannelEvent.model_validate(e["signed"]).model_dump(mode="json") for e in outputs["channel_log"]]
    audit = {
        "idx": 1_234_567,
        "event": "bulletin.posted",
        "at": header["created"],
        "bulletin": outputs["bulletin_id"],
        "channel": header["channel"],
        "author": header["author"],
        "seq": header["seq"],
        "state": header["state"]["pos"],
        "user": "officer",
        "recipients": [r["node"] for r in header["recipients"]],
        "tlp": header["handling"]["tlp"],
    }
    return {
        "envelope header, 2 recipients": header,
        "envelope header, 10 recipients": ten,
        "payload, no attachment": bulletin.payload(),
        "payload, 4 attachments (2 MiB)": attached.payload(),
        "receipt": receipt,
        "channel event (invite)": next(e for e in events if e["change"]["type"] == "invite"),
        "audit entry (bulletin.posted)": audit,
    }


def best_us(call: Callable[[], object], repeat: int, seconds: float) -> float:
    """Best of `repeat` rounds of about `seconds` each, in µs per call."""
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds / 10:  # how many calls make a round
        call()
        calls += 1
    number = max(1, round(calls * 10))
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(number):
            call()
        best = min(best, (time.perf_counter() - t0) / number)
    return best * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="rounds per figure; the best is printed")
    parser.add_argument("--seconds", type=float, default=0.2, help="about how long one round takes")
    args = parser.parse_args()

    load = os.getloadavg()
    print(f"Python {platform.python_version()}, rfc8785 {version('rfc8785')}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in load)}; {os.cpu_count()} cores")
    print()
    print(f"{'object':34} {'bytes':>9} {'path':>5} {'canonical_json':>14} {'rfc8785':>12} {'speed-up':>9}")
    for name, value in objects().items():
        expected = rfc8785.dumps(value)
        fast = fast_canonical_json(value)
        assert canonical_json(value) == expected, name  # a correctness check, not a timing assertion
        path = "fast" if fast is not None else "slow"
        ours = best_us(partial(canonical_json, value), args.repeat, args.seconds)
        theirs = best_us(partial(rfc8785.dumps, value), args.repeat, args.seconds)
        print(f"{name:34} {len(expected):9,} {path:>5} {_us(ours):>14} {_us(theirs):>12} {theirs / ours:8.1f}x")
    print()
    print("Per call, best of the rounds. 'path': the one canonical_json took (fast: the C encoder, slow: rfc8785).")
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def _us(value: float) -> str:
    return f"{value:,.1f} µs" if value < 10_000 else f"{value / 1000:,.1f} ms"


if __name__ == "__main__":
    main()
