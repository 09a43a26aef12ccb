"""How many roster refusals a node writes to its audit log (`RefusalBudget`): a source that keeps
offering junk is counted, not written entry by entry. Pure: no I/O."""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict
from dataclasses import dataclass, field

Window = tuple[dt.datetime, int, int]  # when it began, entries written in it, refusals counted only
OTHER = "other"  # the window of the sources that have none of their own


@dataclass
class RefusalBudget:
    """At most `per_interval` refusal entries per source and interval; the rest are counted and the
    count goes into the source's next entry, so a peer that keeps offering junk cannot fill the log.

    At most `max_sources` sources have a window of their own at once, the rest share one ("other").
    When there are that many, windows that began `interval` ago or more make room for new sources
    (what they counted only goes to "other"), so that sources long gone never keep a new one out.
    Offers without a certificate (`offer:`) have a table of their own, so that any number of them
    never puts a peer's refusal (an equivocation is evidence) or an operator's import in a shared
    window.
    """

    per_interval: int = 10
    interval: dt.timedelta = dt.timedelta(minutes=1)
    max_sources: int = 1000
    # offers, and everything else; each source's window in the order the windows began
    _tables: tuple[OrderedDict[str, Window], OrderedDict[str, Window]] = field(
        default_factory=lambda: (OrderedDict(), OrderedDict())
    )

    def admit(self, source: str, now: dt.datetime) -> int | None:
        """The count suppressed before this refusal if it gets an entry, None if it is counted only."""
        windows = self._tables[0 if source.startswith("offer:") else 1]
        if source not in windows and len(windows) >= self.max_sources:
            self._expire(windows, now)
            if len(windows) >= self.max_sources:
                source = OTHER
        start, written, suppressed = windows.get(source, (now, 0, 0))
        if now - start >= self.interval or source not in windows:
            start, written = now, 0
            windows.pop(source, None)  # begun again: to the end, with the newest windows
        if written >= self.per_interval:
            windows[source] = (start, written, suppressed + 1)
            return None
        windows[source] = (start, written + 1, 0)
        return suppressed

    def _expire(self, windows: OrderedDict[str, Window], now: dt.datetime) -> None:
        """Drop the windows that began an interval ago or more (the first ones); what they counted
        only is not lost, but said in the next entry of the shared window."""
        carried = 0
        while windows:
            source, (start, _, suppressed) = next(iter(windows.items()))
            if now - start < self.interval:
                break
            del windows[source]
            carried += suppressed
        if carried:
            began, written, counted = windows.get(OTHER, (now, 0, 0))
            windows[OTHER] = (began, written, counted + carried)  # kept in place, or the newest


__all__ = ["RefusalBudget"]
