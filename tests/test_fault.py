"""Must-show: separate node processes, SIGKILL at random moments, a node stopped for a while;
afterwards every node holds exactly what it should, and every delivery has its receipt."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from tests import chaos


@pytest.mark.slow
async def test_nothing_lost_nothing_twice_under_sigkill(
    tmp_path: Path, database: Callable[[str], Awaitable[str]]
) -> None:
    db_urls = {n: await database(n) for n in chaos.NODES}
    report = await chaos.run(tmp_path, total=600, rate=60, kills=5, db_urls={k: v for k, v in db_urls.items() if v})
    print("\n" + "\n".join(report.lines()))
    assert report.kills >= 5 and report.sleeps >= 1
    assert report.ok, "\n".join(report.lines())
