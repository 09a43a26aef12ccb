"""The audit entries of channel epochs and history grants (envelope v2, docs/protocol.md 15):
their kinds and typed models, kept here so that `exchange.audit.events`, which re-exports them
and lists them with every other kind, stays one readable module. Pure: no I/O.

A grant is audited at both ends: the owner that made it (`epoch.granted`) and the grantee that
took it (`epoch.grant_taken`); an epoch by its owner (`epoch.made`) and by each reader that took
its key from its wrap (`epoch.key_taken`). A second record for an epoch number, signed by the
owner, is an equivocation (`epoch.equivocation`), audited by the node that finds it.
"""

from __future__ import annotations

from typing import Final, Literal, TypedDict

EPOCH_MADE: Final = "epoch.made"
EPOCH_KEY_TAKEN: Final = "epoch.key_taken"
EPOCH_GRANTED: Final = "epoch.granted"
EPOCH_GRANT_TAKEN: Final = "epoch.grant_taken"
EPOCH_EQUIVOCATION: Final = "epoch.equivocation"


class EpochMade(TypedDict):
    """The owner made and stored epoch `n` of a channel, wrapping its key for `readers`."""

    event: Literal["epoch.made"]
    at: str
    channel: str
    n: int
    hash: str  # the record's hash (15.6), hex: what envelopes of the epoch cite
    state: int  # the channel log position the epoch is for
    readers: list[str]  # sorted: the nodes whose wraps it holds


class EpochKeyTaken(TypedDict):
    """A reader stored an epoch's record and the key it opened from its own wrap."""

    event: Literal["epoch.key_taken"]
    at: str
    channel: str
    n: int
    hash: str
    owner: str  # who signed the record


class EpochGranted(TypedDict):
    """The owner made and stored a history grant: earlier epochs' keys wrapped for `node`."""

    event: Literal["epoch.granted"]
    at: str
    channel: str
    node: str  # the grantee
    state: int  # the channel log position the grant cites
    hash: str  # the grant's digest (SHA-256 of the JCS of the signed grant, protocol.epoch.grant_digest), hex
    epochs: list[int]  # the numbers of the epochs granted, ascending


class EpochGrantTaken(TypedDict):
    """The grantee checked, opened and stored a history grant, and the keys it holds."""

    event: Literal["epoch.grant_taken"]
    at: str
    channel: str
    owner: str  # who signed the grant
    state: int
    hash: str
    epochs: list[int]


class EpochEquivocation(TypedDict):
    """The owner signed two records for epoch `n` of a channel: this node holds one (`held`) and
    was given the other (`other`), whose signature it checked; it refused the other. Once per
    record per running node: only the owner's key makes one, so the owner alone sets how many."""

    event: Literal["epoch.equivocation"]
    at: str
    channel: str
    n: int
    owner: str
    held: str  # the hash of the record held (15.6), hex
    other: str  # the hash of the record refused, hex


def equivocation(at: str, channel: str, n: int, owner: str, held: str, other: str) -> EpochEquivocation:
    """The entry for the owner's second record of epoch `n` (hash `other`), `held` the one kept."""
    return EpochEquivocation(event=EPOCH_EQUIVOCATION, at=at, channel=channel, n=n, owner=owner, held=held, other=other)
