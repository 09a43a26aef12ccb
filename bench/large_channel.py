"""A large channel end to end (issue 13, must-show 2): N member nodes in this process, a burst of
alerts from one of them, and the time until every member holds every alert; v1 and v2 side by side.

Run: .venv/bin/python bench/large_channel.py [--members 50] [--count 1000] [--versions v1,v2]

For each envelope version it provisions a federation of N nodes in a temporary folder (one channel,
every member reads and posts; SQLite files), starts them all on one event loop with real mutual TLS
(the whole federation on one core), posts the alerts at the owner through NodeService.post with
`--concurrency` posts in flight, and times until every other member stores them all. v2: every
node announces `envelope_v2 = true`; v1: none does. It prints the time to full delivery, alerts per
second, the mean stored envelope size, the epochs made, and the load average before and after. It
prints figures and never asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import socket
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from exchange.app import RunningNode, start_node
from exchange.config import NodeConfig
from exchange.model import Bulletin
from exchange.provision import init_federation
from exchange.service.users import authenticate

CHANNEL = "big"
HIGH = 1_000_000  # request rates and bursts: the bench measures the nodes, not their rate limits


FAILURES: dict[str, int] = {}  # "send failed; will retry" by error, from the nodes' outbox loggers


class _CountFailures(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        error = str(getattr(record, "error", "?"))[:140]
        FAILURES[error] = FAILURES.get(error, 0) + 1


def free_port() -> int:
    """A port free now, below the ephemeral range, as tests/conftest.py picks them: one the kernel
    hands out could be taken by the nodes' own outgoing connections before a node binds it."""
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise SystemExit("no free port below the ephemeral range")


def alert(i: int) -> dict[str, Any]:
    return {
        "kind": "alert",
        "handling": {"tlp": "AMBER"},
        "title": f"Mis-declared lithium batteries, air waybill 176-1234567{i % 10} #{i}",
        "body": "Shipper XYZ Trading routes lithium batteries via AMS, declared under HS 9503 as toys.",
        "indicators": {"hs_codes": ["8507.60"], "airports": ["AMS", "NBO"]},
    }


async def provision(folder: Path, members: int, v2: bool) -> dict[str, NodeConfig]:
    folder.mkdir(parents=True)
    ids = [f"m{i:03d}-customs" for i in range(members)]
    rights = {n: ["read", "post"] + (["admin"] if i == 0 else []) for i, n in enumerate(ids)}
    member_toml = ", ".join(f'"{n}" = {json.dumps(r)}' for n, r in rights.items())
    (folder / "federation.toml").write_text(
        '[federation]\nname = "large channel"\nkeys_dir = "../keys"\ndata_dir = "../var"\n\n'
        f'[[channel]]\nid = "{CHANNEL}"\nowner = "{ids[0]}"\ntitle = "large"\nagencies = ["customs"]\n'
        f'tlp = "AMBER"\nmembers = {{ {member_toml} }}\n'
    )
    limits = "".join(f"{k}_per_{w} = {HIGH}\n" for k in ("rate", "burst") for w in ("token", "peer", "address"))
    for i, node_id in enumerate(ids):
        (folder / f"{node_id}.toml").write_text(
            f'[node]\nid = "{node_id}"\nname = "Large {node_id}"\ncountry = "X{chr(65 + i % 26)}"\n'
            f'agency = "customs"\nport = {free_port()}\ncrypto_workers = 0\n'
            f"envelope_v2 = {'true' if v2 else 'false'}\n"
            # One event loop serves all N nodes: a request may wait long for its turn, which is
            # not a slow client; and 49 senders retrying each second would only add load.
            "retry_base_seconds = 0.2\nretry_max_seconds = 5.0\nrequest_timeout_seconds = 300\n"
            "header_timeout_seconds = 300\nread_timeout_seconds = 300\nbody_timeout_seconds = 300\n" + limits
        )
    await init_federation(folder)
    return {n: NodeConfig.load(folder / f"{n}.toml", environ={}) for n in ids}


def stored(cfg: NodeConfig) -> tuple[int, int]:
    """(bulletins held, bytes of their envelopes), read from the node's SQLite file."""
    path = sa.engine.make_url(cfg.database_url).database
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as conn:
        n, size = conn.execute("SELECT count(*), coalesce(sum(length(envelope)), 0) FROM bulletins").fetchone()
    return int(n), int(size)


async def run(members: int, count: int, concurrency: int, v2: bool, base: Path) -> dict[str, Any]:
    configs = await provision(base / ("v2" if v2 else "v1") / "nodes", members, v2)
    nodes: list[RunningNode] = []
    try:
        for cfg in configs.values():
            nodes.append(await start_node(cfg))
        author = nodes[0].service
        token = (next(iter(configs.values())).keys_dir / "tokens" / "officer").read_text().strip()
        user = await authenticate(author.store, token)
        todo = iter(range(count))
        load_before = os.getloadavg()
        started = time.perf_counter()

        async def poster() -> None:
            for i in todo:
                await author.post(user, CHANNEL, Bulletin.model_validate(alert(i)))

        await asyncio.gather(*(poster() for _ in range(concurrency)))
        posted = time.perf_counter() - started
        others = list(configs.values())[1:]
        while True:
            held = [stored(cfg)[0] for cfg in others]
            if min(held) >= count:
                break
            await asyncio.sleep(0.2)
        delivered = time.perf_counter() - started
        n, size = stored(next(iter(configs.values())))
        epochs = len(author.epochs.records(CHANNEL))
        return {
            "version": "v2" if v2 else "v1",
            "posted_s": posted,
            "delivered_s": delivered,
            "per_s": count / delivered,
            "envelope_bytes": size / max(n, 1),
            "epochs": epochs,
            "load_before": load_before,
            "load_after": os.getloadavg(),
        }
    finally:
        for node in reversed(nodes):
            await node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=50)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--versions", default="v1,v2")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    outbox_log = logging.getLogger("exchange.outbox")
    outbox_log.addHandler(_CountFailures())
    outbox_log.propagate = False
    print(
        f"large channel: {args.members} members in one process (one event loop), {args.count} alerts "
        f"from the owner, {args.concurrency} posts in flight; cpu count {os.cpu_count()}"
    )
    with tempfile.TemporaryDirectory(prefix="large-channel-") as tmp:
        for version in args.versions.split(","):
            r = asyncio.run(run(args.members, args.count, args.concurrency, version == "v2", Path(tmp)))
            print(
                f"{r['version']}: all {args.count} alerts posted in {r['posted_s']:.1f} s, held by all "
                f"{args.members - 1} other members after {r['delivered_s']:.1f} s ({r['per_s']:.1f} alerts/s "
                f"to every member); mean envelope {r['envelope_bytes'] / 1024:.1f} KiB; epochs made {r['epochs']}; "
                f"load average {' '.join(f'{x:.2f}' for x in r['load_before'])} before, "
                f"{' '.join(f'{x:.2f}' for x in r['load_after'])} after"
            )
            for error, n in sorted(FAILURES.items(), key=lambda e: -e[1])[:5]:
                print(f"    {n} sends failed and were retried: {error}")
            FAILURES.clear()
            sys.stdout.flush()


if __name__ == "__main__":
    main()
