"""`exchange audit`'s quorum policy (docs/audit.md, section 12): the witnesses per log it counts
with, and how it tells a log's designated witnesses from the others in what it prints."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from exchange.audit import quorum as policy
from exchange.audit.log import BundleCheck, KeyRing, LogReport
from exchange.audit.trace import Trace
from exchange.audit.witness_sets import DEFAULT_WITNESSES
from exchange.config import NodeConfig


def finish_with_quorum(check: BundleCheck, quorum: int, witnesses: int | None) -> LogReport:
    """Finish the check; with `witnesses`, by the quorum policy of designated witnesses."""
    if witnesses is None:
        return check.finish(quorum=quorum)
    return policy.apply(check.finish(), check.verifier.keys, witnesses, quorum)


def witnesses_per_log(node_path: Path | None, given: int | None) -> int:
    """The federation's witnesses per log: as given, else the node file's, else the default."""
    if given is not None:
        return given
    return NodeConfig.load(node_path).audit_witnesses if node_path is not None else DEFAULT_WITNESSES


def by_whom(witnesses: Sequence[str], designated: Sequence[str] | None) -> str:
    """Who co-signed, the log's designated witnesses told from the others."""
    named = ", ".join(witnesses) or "no witness yet"
    if designated is None:
        return named
    chosen = [w for w in witnesses if w in designated]
    others = [w for w in witnesses if w not in designated]
    more = f"; not designated, not counted: {', '.join(others)}" if others else ""
    return f"{named} ({len(chosen)} of its {len(designated)} designated witnesses{more})"


def trace_designated(trace: Trace, keys: KeyRing, k: int) -> dict[str, tuple[str, ...]]:
    """The designated witnesses of each log whose evidence the trace holds."""
    return {ev.node: policy.designated(keys, ev.node, k) for ev in trace.evidence if ev.node}
