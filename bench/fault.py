"""Fault run at full size: 10,000 bulletins posted at a steady rate to three node processes while one
is SIGKILLed at random moments and another is stopped for a while; prints the counts.

    .venv/bin/python bench/fault.py [--total 10000] [--rate 150] [--kills 10]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests import chaos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=150.0, help="bulletins per second posted at the first node")
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="exchange-fault-") as folder:
        report = asyncio.run(
            chaos.run(Path(folder), total=args.total, rate=args.rate, kills=args.kills, seed=args.seed)
        )
    print("\n".join(report.lines()))
    print("result:", "OK, nothing lost and nothing twice" if report.ok else "FAILED")
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
