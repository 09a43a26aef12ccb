"""Failed witnessing exchanges with partners, for the operator: each is logged once where it
happens (a warning; information for a partner that is only unreachable, which the next round
asks again; a split view is logged as an error where it is judged) and counted per partner,
direction and kind for `GET /metrics` (exchange.service.metrics), since the process started.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Literal

from exchange.audit.witness import failure_kind

log = logging.getLogger("exchange.audit")

Direction = Literal["push", "pull"]


class WitnessFailures:
    """What failed, counted by (partner, direction, kind): partners are roster nodes and the
    directions and kinds fixed sets, so the labels stay bounded."""

    def __init__(self, me: str) -> None:
        self.me = me
        self._counts: Counter[tuple[str, str, str]] = Counter()  # (partner, Direction, FailureKind)

    def record(self, partner: str, direction: Direction, exc: BaseException, what: str) -> str:
        """Count and log one failed exchange; return it as the round's outcome shows it."""
        kind = failure_kind(exc)
        self._counts[(partner, direction, kind)] += 1
        shown = f"{type(exc).__name__}: {getattr(exc, 'detail', exc)}"
        if kind != "split-view":  # logged as an error, once a round, by Witness._split_view
            level = logging.INFO if kind == "unreachable" else logging.WARNING
            log.log(level, "%s: %s (%s, %s): %s", self.me, what, direction, kind, shown)
        return shown

    def counts(self) -> dict[tuple[str, str, str], int]:
        """Failed exchanges so far, by (partner, direction, kind)."""
        return dict(self._counts)
