"""A worker hears the others' commits for as long as it runs (exchange.store.workers.Changes):
the listener's liveness check must not leave its session in a transaction, or PostgreSQL holds
every later notification until that transaction ends (it never did: found in review; the
channel states and epochs of other workers then went unheard after the first check)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import sqlalchemy as sa

from exchange.store import workers
from exchange.store.engine import make_engine
from tests.conftest import eventually

POSTGRES_ONLY = pytest.mark.parametrize(
    "database", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)


@POSTGRES_ONLY
async def test_notifications_still_arrive_after_the_liveness_checks(
    database: Callable[[str], Awaitable[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = await database("changes")
    monkeypatch.setattr(workers, "LISTEN_CHECK_SECONDS", 0.05)
    engine, other = make_engine(url), make_engine(url)
    heard: list[str] = []
    changes = workers.Changes(engine)
    changes.on(workers.CHANNELS, heard.append)
    changes.start()
    try:

        async def notify(payload: str) -> None:
            async with other.begin() as conn:
                await workers.notify(conn, workers.CHANNELS, payload)

        async def listening() -> bool:  # once the listener has its session, the first is heard
            await notify("first")
            return "first" in heard

        await eventually(listening, timeout=10, what="the listener to listen")
        for n in range(3):  # each after several liveness checks (0.05 s apart)
            async with other.connect() as conn:
                await conn.execute(sa.text("SELECT pg_sleep(0.3)"))
            await notify(f"c{n}")

            async def heard_it(payload: str = f"c{n}") -> bool:
                return payload in heard

            await eventually(heard_it, timeout=10, what=f"notification c{n}")
    finally:
        await changes.close()
        await engine.dispose()
        await other.dispose()


@POSTGRES_ONLY
async def test_the_listener_listens_again_after_its_backend_is_terminated(
    database: Callable[[str], Awaitable[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncpg's own errors (a backend terminated, a server restarted) are neither OSError nor
    SQLAlchemy's: the listener's task ended on the first one, this worker heard no other worker's
    change again, and its close() raised that error, stopping the node's shutdown midway (found
    by a read-only review). It now listens again, and says so to its reconnect callbacks."""
    url = await database("changes")
    monkeypatch.setattr(workers, "LISTEN_CHECK_SECONDS", 0.05)
    engine, other = make_engine(url), make_engine(url)
    heard: list[str] = []
    reconnected: list[int] = []
    changes = workers.Changes(engine)
    changes.on(workers.CHANNELS, heard.append)
    changes.on_reconnect(lambda: reconnected.append(1))
    changes.start()
    try:

        async def notify(payload: str) -> None:
            async with other.begin() as conn:
                await workers.notify(conn, workers.CHANNELS, payload)

        async def hears(payload: str) -> bool:
            await notify(payload)
            return payload in heard

        await eventually(lambda: hears("first"), timeout=10, what="the listener to listen")
        async with other.begin() as conn:  # every other session on this database: the listener's
            ended = await conn.scalar(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        assert ended and ended >= 1
        await eventually(lambda: hears("after"), timeout=10, what="the listener to listen again")  # before: never
        assert len(reconnected) >= 2
    finally:
        await changes.close()  # before: raised the listener's error
        await engine.dispose()
        await other.dispose()
