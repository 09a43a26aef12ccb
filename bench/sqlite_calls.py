"""What one small SQLite statement costs through aiosqlite's thread and through the node's engine.

Run: .venv/bin/python bench/sqlite_calls.py [--count N]

Times N one-row SELECTs by primary key, and N group-commit-sized write transactions (BEGIN
IMMEDIATE, 10 single-row INSERTs, COMMIT), through three engines on one SQLite file in a
temporary folder: SQLAlchemy's aiosqlite dialect as it comes (every call handed to aiosqlite's
thread), the node's engine (exchange.store.engine.make_engine: calls that cannot wait run on the
event loop, exchange/store/loop_sqlite.py), and SQLAlchemy's synchronous pysqlite engine, the
floor. Prints CPU and wall µs per statement and the machine's load. Never asserts on time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from exchange.store.engine import make_engine

TABLE = sa.table("t", sa.column("a"), sa.column("b"))
READ = sa.select(TABLE.c.b).where(TABLE.c.a == sa.bindparam("k"))
WRITE = sa.insert(TABLE).values(b=sa.bindparam("b"))
ROWS = 1000
PER_TX = 10


async def _async_run(engine: AsyncEngine, n: int) -> tuple[float, float, float, float]:
    async with engine.connect() as conn:  # warm: the connection is open before timing
        await conn.scalar(sa.select(1))
    c0, w0 = time.process_time(), time.perf_counter()
    async with engine.connect() as conn:
        for i in range(n):
            (await conn.execute(READ, {"k": i % ROWS + 1})).scalar()
    read = ((time.process_time() - c0) / n * 1e6, (time.perf_counter() - w0) / n * 1e6)
    txs = max(1, n // (PER_TX * 10))
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(txs):
        async with engine.connect() as conn:
            await conn.exec_driver_sql("BEGIN IMMEDIATE")
            for _ in range(PER_TX):
                await conn.execute(WRITE, {"b": "y" * 50})
            await conn.commit()
    write = ((time.process_time() - c0) / txs / PER_TX * 1e6, (time.perf_counter() - w0) / txs / PER_TX * 1e6)
    return (*read, *write)


def _sync_run(url: str, n: int) -> tuple[float, float, float, float]:
    engine = sa.create_engine(url)
    c0, w0 = time.process_time(), time.perf_counter()
    with engine.connect() as conn:
        for i in range(n):
            conn.execute(READ, {"k": i % ROWS + 1}).scalar()
    read = ((time.process_time() - c0) / n * 1e6, (time.perf_counter() - w0) / n * 1e6)
    txs = max(1, n // (PER_TX * 10))
    c0, w0 = time.process_time(), time.perf_counter()
    for _ in range(txs):
        with engine.connect() as conn:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
            for _ in range(PER_TX):
                conn.execute(WRITE, {"b": "y" * 50})
            conn.commit()
    write = ((time.process_time() - c0) / txs / PER_TX * 1e6, (time.perf_counter() - w0) / txs / PER_TX * 1e6)
    engine.dispose()
    return (*read, *write)


async def main(count: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "calls.db"
        setup = sa.create_engine(f"sqlite:///{path}")
        with setup.begin() as conn:
            conn.exec_driver_sql("PRAGMA journal_mode=WAL")
            conn.exec_driver_sql("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT)")
            conn.execute(WRITE, [{"b": "x" * 50}] * ROWS)
        setup.dispose()
        url = f"sqlite+aiosqlite:///{path}"
        print(f"load average before: {os.getloadavg()[0]:.2f} (2-core machine; figures are noisy)")
        print(f"{'engine':<34} {'read cpu µs':>12} {'read wall µs':>13} {'write cpu µs':>13} {'write wall µs':>14}")
        plain = create_async_engine(url, connect_args={"timeout": 30})
        figures = await _async_run(plain, count)
        await plain.dispose()
        print(f"{'aiosqlite, every call in its thread':<34} " + " ".join(f"{f:>12.1f}" for f in figures))
        node = make_engine(url)
        figures = await _async_run(node, count)
        await node.dispose()
        print(f"{'node engine (loop_sqlite)':<34} " + " ".join(f"{f:>12.1f}" for f in figures))
        figures = _sync_run(f"sqlite:///{path}", count)
        print(f"{'pysqlite, synchronous (floor)':<34} " + " ".join(f"{f:>12.1f}" for f in figures))
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        print("write = per INSERT of a 10-INSERT transaction with BEGIN IMMEDIATE and COMMIT")
        print("(the node engine sets synchronous=FULL, the others SQLite's default)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=3000, help="SELECTs timed per engine (default 3000)")
    asyncio.run(main(parser.parse_args().count))
