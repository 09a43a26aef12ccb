"""Build tests/vectors/witness-sets-v1.json: the designated witnesses of each log for fixed rosters
and witness counts (docs/audit.md, section 12), with the rank of every (log, node) pair of the
first roster, so that another implementation can check its hashing before its selection.

Run: python -m tests.vectors.make_witness_set_vectors [--check]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from exchange.audit.witness_sets import DOMAIN, rank, witness_sets

HERE = Path(__file__).resolve().parent
FILE = HERE / "witness-sets-v1.json"

SAMPLE = ["gb-avsec", "ke-customs", "nl-customs", "wco-rilo"]  # the sample federation (nodes/)
EIGHT = [*SAMPLE, "de-zoll", "fr-douane", "sg-customs", "us-cbp"]
CASES: list[tuple[str, list[str], int]] = [
    ("sample federation, k = 5 (more than the others: every other node)", SAMPLE, 5),
    ("sample federation, k = 2", SAMPLE, 2),
    ("eight nodes, k = 3", EIGHT, 3),
    ("eight nodes, k = 1", EIGHT, 1),
    ("eight nodes less nl-customs (suspended), k = 3", [n for n in EIGHT if n != "nl-customs"], 3),
]
BAD_COUNTS: list[Any] = [0, -1, 65, 2.5, "3", True]


def build() -> dict[str, Any]:
    cases = []
    for name, nodes, k in CASES:
        sets = witness_sets(nodes, k)
        cases.append(
            {
                "name": name,
                "nodes": nodes,
                "k": k,
                "witnesses": {log: list(sets.witnesses(log)) for log in sorted(nodes)},
                "witnessed_by": {node: list(sets.witnessed_by(node)) for node in sorted(nodes)},
            }
        )
    return {
        "description": "Designated witnesses of each log: the k other active nodes with the smallest "
        "SHA-256(domain || log || 0x0a || node), ties by node id (docs/audit.md, section 12).",
        "domain": DOMAIN.decode(),
        "ranks": {f"{log} {node}": rank(log, node).hex() for log in EIGHT for node in EIGHT if node != log},
        "cases": cases,
        "bad_counts": BAD_COUNTS,
    }


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def main() -> None:
    text = render(build())
    if "--check" in sys.argv:
        sys.exit(0 if FILE.read_text() == text else 1)
    FILE.write_text(text)


if __name__ == "__main__":
    main()
