"""Fixtures the application layer's tests share."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from exchange.store import Store


@pytest.fixture
async def url(tmp_path: Path, database: Callable[[str], Awaitable[str]]) -> str:
    """A fresh, empty database of each kind (SQLite, PostgreSQL): its URL."""
    return await database("service") or f"sqlite+aiosqlite:///{tmp_path / 'service.db'}"


@pytest.fixture
async def store(url: str) -> AsyncIterator[Store]:
    """A store opened on `url`, closed after the test."""
    opened = await Store.open(url)
    yield opened
    await opened.close()
