"""Witness sets (docs/audit.md, section 12): which nodes witness each log, and which cosignatures
the quorum policy (`exchange.audit.quorum`) counts.

Every log is witnessed by `k` nodes (the federation-wide number of witnesses per log, default 5),
chosen by rendezvous hashing from the active nodes of the roster: for each other node `n`, the
rank `SHA-256("exchange/witness-set/v1\\n" || log || "\\n" || n)`; the `k` nodes with the smallest
ranks (ties, which need a SHA-256 collision, broken by node id) are the log's designated witnesses.
Every node and every verifier computes every log's set from the roster it holds, with no message
exchanged; a roster change moves only the witnesses of the nodes that came or went.

The quorum policy counts only cosignatures by the log's designated witnesses: a log cannot pick
friendly witnesses that never saw the history it showed the others. Cosignatures by any other node
still verify and are reported, as "not designated", but they do not count.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from exchange.audit.checkpoint import WITNESS_PREFIX
from exchange.crypto import sha256
from exchange.errors import InvalidInput

DOMAIN = b"exchange/witness-set/v1\n"
DEFAULT_WITNESSES = 5  # witnesses per log, federation-wide (docs/operations.md, "Witness sets")
MAX_WITNESSES = 64  # more would bring back the load that witness sets exist to avoid
MAX_C2SP_WITNESSES = 16  # configured C2SP witnesses of one log (`tlog_witnesses`)
# With the log's own line, a note co-signed by all of them fits note.MAX_SIGNATURES; a log keeps
# no more cosignature lines of one checkpoint than that (exchange.service.audit.table).
MAX_COSIGNATURES = MAX_WITNESSES + MAX_C2SP_WITNESSES


def check_witness_count(k: int) -> None:
    """A number of witnesses per log is a whole number from 1 to MAX_WITNESSES, or InvalidInput."""
    if type(k) is not int or not 1 <= k <= MAX_WITNESSES:
        raise InvalidInput(f"the number of witnesses per log must be from 1 to {MAX_WITNESSES}, not {k!r}")


def rank(log: str, node: str) -> bytes:
    """Where `node` stands as a candidate witness of `log`'s log: smaller is chosen first."""
    return sha256(DOMAIN + log.encode() + b"\n" + node.encode())


def witnesses_of(log: str, nodes: Iterable[str], k: int) -> tuple[str, ...]:
    """The designated witnesses of `log`: the `k` nodes of `nodes` (`log` itself excluded) with the
    smallest rank, smallest first; every other node if there are no more than `k`."""
    check_witness_count(k)
    others = sorted({n for n in nodes if n != log}, key=lambda n: (rank(log, n), n))
    return tuple(others[:k])


def roster_nodes(log: str, witness_keys: Iterable[str]) -> set[str]:
    """The roster's nodes, from a log's own node id and the key names of its possible witnesses
    (`exchange/witness/<node>` for every other roster node; C2SP witnesses, named otherwise, are no
    roster node and never designated). `KeyRing.witnesses` also names departed nodes, whose earlier
    cosignatures still verify: the quorum policy takes the active ones from `KeyRing.nodes`."""
    return {log, *(n.removeprefix(WITNESS_PREFIX) for n in witness_keys if n.startswith(WITNESS_PREFIX))}


@dataclass(frozen=True)
class WitnessSets:
    """Every log's designated witnesses, for one set of active nodes and one `k`."""

    k: int
    of: Mapping[str, tuple[str, ...]]  # log -> its witnesses, smallest rank first

    def witnesses(self, log: str) -> tuple[str, ...]:
        """Who witnesses `log` (nothing for a node that is not among the active nodes)."""
        return self.of.get(log, ())

    def witnessed_by(self, node: str) -> tuple[str, ...]:
        """The logs `node` is a designated witness of, sorted."""
        return tuple(sorted(log for log, chosen in self.of.items() if node in chosen))


@functools.lru_cache(maxsize=16)
def _sets(nodes: tuple[str, ...], k: int) -> WitnessSets:
    return WitnessSets(k, {log: witnesses_of(log, nodes, k) for log in nodes})


def witness_sets(nodes: Iterable[str], k: int) -> WitnessSets:
    """Every log's witnesses among the active `nodes`: n² hashes, computed once per roster and `k`
    (nodes of one process that hold the same roster share the answer)."""
    check_witness_count(k)
    return _sets(tuple(sorted(set(nodes))), k)


@dataclass(frozen=True)
class QuorumCount:
    """The cosignatures of one checkpoint, split by the quorum policy."""

    designated: tuple[str, ...]  # the log's designated witnesses
    counted: tuple[str, ...]  # those of them whose cosignature verified
    not_designated: tuple[str, ...]  # other witnesses whose cosignature verified: reported, not counted


def tally(cosigners: Collection[str], designated: Collection[str]) -> QuorumCount:
    """Split verified cosigners (node ids) into those the policy counts and the others."""
    chosen = tuple(designated)
    return QuorumCount(
        chosen,
        tuple(sorted(w for w in cosigners if w in chosen)),
        tuple(sorted(w for w in cosigners if w not in chosen)),
    )
