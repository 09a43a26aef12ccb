"""A node's SQLite database holds the decrypted bulletins and the channels' epoch keys: it is made
readable by the node's user alone (0600, its folder 0700 when made with it), and SQLite's -wal and
-shm files take its mode. Before, SQLite made all three with the umask's mode, often 0644, beside
an encryption key written 0600 (found by a read-only review)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from exchange.store import Store


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_new_database_is_the_nodes_users_alone(tmp_path: Path) -> None:
    path = tmp_path / "nl-customs.db"
    old = os.umask(0o022)
    try:
        store = await Store.open(f"sqlite+aiosqlite:///{path}")
        try:
            async with store.engine.begin() as conn:  # a write: the WAL is made
                await conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            made = [p for p in tmp_path.iterdir() if p.name.startswith("nl-customs.db")]
            assert {p.name for p in made} >= {"nl-customs.db", "nl-customs.db-wal"}
            assert {p.name: mode(p) for p in made} == {p.name: 0o600 for p in made}  # before: 0o644
        finally:
            await store.close()
    finally:
        os.umask(old)


async def test_a_database_folder_made_with_it_is_the_nodes_users_alone(tmp_path: Path) -> None:
    folder = tmp_path / "var" / "nl"
    old = os.umask(0o022)
    try:
        await (await Store.open(f"sqlite+aiosqlite:///{folder / 'nl-customs.db'}")).close()
    finally:
        os.umask(old)
    assert mode(folder) == 0o700 and mode(folder / "nl-customs.db") == 0o600


async def test_an_existing_database_keeps_its_mode(tmp_path: Path) -> None:
    """What an administrator set on a database that exists is left as it is."""
    path = tmp_path / "nl-customs.db"
    await (await Store.open(f"sqlite+aiosqlite:///{path}")).close()
    path.chmod(0o640)
    await (await Store.open(f"sqlite+aiosqlite:///{path}")).close()
    assert mode(path) == 0o640
