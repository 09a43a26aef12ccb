"""The supervisor of `exchange node run --workers N` starts a worker that died again, waiting
longer after each death that came soon after its start (found by a read-only review: a worker
that exits at once on every start, on a tampered audit log or an outdated schema, was started
again every 0.7 s for ever, filling the log)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import pytest

from exchange.cli.workers import RESTART_MAX, STEADY, Supervisor, restart_delay


def test_the_wait_doubles_with_each_quick_death_up_to_a_bound() -> None:
    assert [restart_delay(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert restart_delay(30) == RESTART_MAX


class Dead:
    """A worker process that has exited."""

    pid, returncode = 4242, 3

    def poll(self) -> int:
        return self.returncode


def test_a_worker_that_dies_at_once_is_started_again_ever_more_slowly(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    config: Any = type("Config", (), {"id": "nl-customs"})()
    supervisor = Supervisor(Path("nodes/nl-customs.toml"), config, 2)
    starts: list[float] = []

    def start(slot: int) -> Any:
        starts.append(clock[0])
        supervisor.procs[slot] = Dead()  # type: ignore[assignment]
        supervisor.started[slot] = clock[0]
        return supervisor.procs[slot]

    monkeypatch.setattr(supervisor, "_start", start)
    start(1)
    for _ in range(300):  # 30 s of the supervisor's loop, a tick every 0.1 s
        supervisor._tend()
        clock[0] += 0.1
    gaps = [round(b - a, 1) for a, b in itertools.pairwise(starts)]
    # Each death is seen at the next tick (0.1 s): before, a start every tick or so, 40 and more.
    assert all(w <= g <= w + 0.2 for g, w in zip(gaps, (0.5, 1.0, 2.0, 4.0, 8.0), strict=False)), gaps
    assert len(starts) <= 7

    # A worker that ran steadily before it died waits the first delay again.
    clock[0] = supervisor.started[1] + STEADY + 1
    supervisor.due.clear()
    supervisor._tend()
    assert supervisor.quick[1] == 1 and supervisor.due[1] == clock[0] + 0.5
