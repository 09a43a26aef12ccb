"""The quorum policy (docs/audit.md, section 12): a verifier accepts a log only if its latest
checkpoint carries `quorum` cosignatures by the log's designated witnesses (`exchange.audit.
witness_sets`), computed from the roster the verifier holds. Cosignatures by other witnesses (other
roster nodes, C2SP witnesses) verify and are reported, but are not counted: a log cannot make up its
quorum with witnesses of its own choosing that never saw the history it showed the others.

`LogVerifier.finish(quorum=...)` counts every verified cosignature; `exchange audit verify --quorum`
applies this policy on top. Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import replace

from exchange.audit.log import KeyRing, LogReport
from exchange.audit.witness_sets import QuorumCount, check_witness_count, tally, witnesses_of
from exchange.errors import AuditTampered, InvalidInput


def designated(keys: KeyRing, log: str, k: int) -> tuple[str, ...]:
    """`log`'s designated witnesses among the active roster nodes whose keys `keys` holds."""
    return witnesses_of(log, keys.nodes, k)


def check_policy(quorum: int, k: int) -> None:
    """A quorum a verifier may ask for: from 0 (no policy) to the witnesses per log, or InvalidInput."""
    check_witness_count(k)
    if type(quorum) is not int or not 0 <= quorum <= k:
        raise InvalidInput(f"a quorum of {quorum!r} cannot be met: each log has {k} designated witnesses")


def check_quorum(size: int | None, votes: QuorumCount, quorum: int) -> None:
    """Raise AuditTampered unless the latest checkpoint (of `size`, None if there is none) carries
    `quorum` cosignatures by designated witnesses."""
    if quorum == 0 or (size is not None and len(votes.counted) >= quorum):
        return
    if size is None:
        raise AuditTampered(f"no checkpoint is signed, so none is co-signed by a quorum of {quorum}")
    by = ", ".join(votes.counted) or "none of them"
    others = f"; not counted, as not designated: {', '.join(votes.not_designated)}" if votes.not_designated else ""
    raise AuditTampered(
        f"the latest checkpoint (size {size}) has {len(votes.counted)} cosignature(s) by the log's designated "
        f"witnesses ({', '.join(votes.designated)}): {by}, fewer than the quorum of {quorum}{others}"
    )


def apply(report: LogReport, keys: KeyRing, k: int, quorum: int) -> LogReport:
    """The report with its latest checkpoint's cosigners split by the policy; AuditTampered if
    fewer than `quorum` of them are designated witnesses."""
    check_policy(quorum, k)
    latest = report.latest
    votes = tally(latest.witnesses if latest else (), designated(keys, report.node, k))
    check_quorum(latest.size if latest else None, votes, quorum)
    return replace(report, quorum=votes)
