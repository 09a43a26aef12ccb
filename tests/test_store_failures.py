"""The group-commit writer when the store itself fails (exchange.store.writer), from an operator's
side, on SQLite and PostgreSQL:

- a COMMIT whose answer is lost (the connection drops after the server committed): the post is
  stored once and its caller gets Unavailable (503, retry with the Idempotency-Key). Before, the
  writer ran each job of the batch again alone, and one acknowledged post became two bulletins;
- every pooled connection taken: each job of the batch gets Unavailable (503), and the batch
  waits for the pool once, not once more per job. Before, a write answered 500 with SQLAlchemy's
  TimeoutError, and each of the batch's jobs waited out the pool's timeout again.
Found by a read-only review."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from exchange.errors import Unavailable
from exchange.provision import init_federation
from exchange.store import Store, bulletins, outbox
from tests.conftest import write_federation
from tests.service.lone_node import NoPartners, bulletin, node_service

NL = "nl-customs"
NODES = {NL: ("NL", "customs"), "ke-customs": ("KE", "customs")}
CHANNEL = {"id": "c2c", "owner": NL, "agencies": ["customs"], "members": {NL: ["read", "post"], "ke-customs": ["read"]}}


async def test_a_post_whose_commit_answer_is_lost_is_stored_once_and_answered_unavailable(
    tmp_path: Path, database: Callable[[str], Awaitable[str]]
) -> None:
    write_federation(tmp_path, NODES, [CHANNEL], {n: await database(n) for n in NODES})
    await init_federation(tmp_path)
    node = await node_service(tmp_path / f"{NL}.toml", NoPartners())
    try:
        user = await node.users.get("officer")
        engine = node.store.engine.sync_engine
        armed = {"post": False, "fired": False}

        def seen(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
            if statement.lstrip().upper().startswith("INSERT INTO BULLETINS"):
                armed["post"] = True

        def do_commit(dbapi_connection: Any) -> None:
            original(dbapi_connection)  # the server has committed...
            if armed["post"] and not armed["fired"]:
                armed["fired"] = True
                raise ConnectionResetError("connection lost before COMMIT's answer")  # ...its answer is lost

        sa.event.listen(engine, "before_cursor_execute", seen)
        original = engine.dialect.do_commit
        engine.dialect.do_commit = do_commit  # type: ignore[method-assign]
        try:
            outcome: object = await node.posting.post(user, "c2c", bulletin("cash"))
        except Exception as exc:
            outcome = exc
        finally:
            engine.dialect.do_commit = original  # type: ignore[method-assign]
            sa.event.remove(engine, "before_cursor_execute", seen)
        assert armed["fired"]
        assert isinstance(outcome, Unavailable), repr(outcome)
        async with node.store.read() as conn:
            stored = (await conn.execute(sa.select(bulletins.c.seq))).scalars().all()
            queued = await conn.scalar(sa.select(sa.func.count()).select_from(outbox))
        assert stored == [1] and queued == 1, (stored, queued)
        again = await node.posting.post(user, "c2c", bulletin("next"))  # the writer goes on
        assert again.seq == 2
    finally:
        await node.stop()
        await node.store.close()


async def test_a_write_past_a_full_pool_is_unavailable_and_waits_for_the_pool_once(
    tmp_path: Path, database: Callable[[str], Awaitable[str]]
) -> None:
    url = await database("busy") or f"sqlite+aiosqlite:///{tmp_path / 'busy.db'}"
    store = await Store.open(url)
    pool = store.engine.pool
    assert isinstance(pool, sa.pool.QueuePool)  # on either database
    pool._timeout = 0.2  # 30 s by default
    tries = 0
    get = pool._do_get

    def counted() -> Any:
        nonlocal tries
        tries += 1
        return get()

    try:
        async with contextlib.AsyncExitStack() as held:
            for _ in range(pool.size() + pool._max_overflow):
                await held.enter_async_context(store.read())
            pool._do_get = counted  # type: ignore[method-assign]  # counts the waits for a pooled connection
            got = await asyncio.gather(  # a made-up kind of entry: the store takes any
                *(store.audit({"event": "test.busy", "n": i}) for i in range(5)),  # type: ignore[arg-type]
                return_exceptions=True,
            )
        assert all(isinstance(g, Unavailable) for g in got), got
        assert tries == 1, f"{tries} waits for a pooled connection for one group commit of 5 jobs"
    finally:
        await store.close()


async def test_the_store_failing_while_a_batch_is_run_job_by_job_is_unavailable(tmp_path: Path) -> None:
    """A job's own failure spoils its batch, and the database goes away just then: the jobs run
    again alone each get Unavailable (503), not the writer's private wrapper (a 500). Found by a
    read-only review of the change above."""
    store = await Store.open(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    pool = store.engine.pool
    get = pool._do_get
    down = False

    def maybe_down() -> Any:
        if down:
            raise sa.exc.TimeoutError("QueuePool limit reached (the database went away)")
        return get()

    async def fine(conn: Any, audit: Any) -> int:
        await conn.execute(sa.text("SELECT 1"))
        return 1

    async def broken(conn: Any, audit: Any) -> int:
        nonlocal down
        down = True
        raise sa.exc.OperationalError("INSERT ...", {}, Exception("server closed the connection unexpectedly"))

    pool._do_get = maybe_down  # type: ignore[method-assign]  # the database goes away on demand
    try:
        got = await asyncio.gather(store.write(fine), store.write(broken), return_exceptions=True)
        assert isinstance(got[0], Unavailable), repr(got[0])
    finally:
        down = False
        await store.close()
