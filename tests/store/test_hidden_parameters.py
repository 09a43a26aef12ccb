"""A failed statement's error names none of its parameters: they hold decrypted bulletins, webhook
signing secrets and token hashes, and such an error reaches the node's log (`log.exception`) and
messages. SQLAlchemy put `[parameters: ...]` in the text of every failed statement (found by a
read-only review of the webhooks, whose UPDATE names the webhook's secret). SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from exchange.store import Store
from exchange.store.tables import webhooks

SECRET = "s3cret-that-must-not-be-logged-" + "x" * 32


async def test_a_failed_statements_error_does_not_show_its_parameters(
    database: Callable[[str], Awaitable[str]], tmp_path: Path
) -> None:
    url = await database("hidden") or f"sqlite+aiosqlite:///{tmp_path / 'hidden.db'}"
    store = await Store.open(url)
    try:
        async with store.engine.begin() as conn:
            # A row that breaks the table's NOT NULL rules, with the secret among its values.
            with pytest.raises(sa.exc.DBAPIError) as failed:
                await conn.execute(sa.insert(webhooks).values(secret=SECRET, url=None, channel=None))
        assert SECRET not in str(failed.value)
        assert "hidden due to hide_parameters" in str(failed.value)
    finally:
        await store.close()
