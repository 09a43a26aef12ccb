"""Channel handover (docs/protocol.md, 7.5): when the roster revokes a channel's owner, its
successor, fixed by the log and the roster alone, continues the same log.

Pure: the rules take the held roster v2 version; `exchange.protocol.channel.apply_event` calls them.
"""

from __future__ import annotations

from collections.abc import Mapping

from exchange.crypto import VerifyKey, b64d
from exchange.errors import HandoverRefused, UnknownPeer
from exchange.model import ChannelEvent, Handover, NodeId, Right
from exchange.protocol.roster import Federation
from exchange.protocol.rosterchain import TrustedRoster


def signing_key(node: str, kid: str, fed: Federation, roster: TrustedRoster | None) -> VerifyKey | None:
    """The key `kid` of `node` that checks a channel signature (an event, an acceptance), or None.

    An active node: its current key or a former one (`Federation.signing_key_of`, a log is
    replayed from its start). A node that the held version no longer lists as active (revoked,
    suspended) is looked up in that version, which keeps every key a node ever had: what it signed
    before stays valid (6a.7). Whether a *new* event of such a node is taken is 7.5's rule, which
    the node that imports it applies (`exchange.service.channels`).
    """
    try:
        return fed.signing_key_of(node, kid, stored=True)
    except UnknownPeer:
        if roster is None:
            raise
    entry = next((k for k in roster.node(node).keys if k.use == "signing" and k.kid == kid), None)
    return None if entry is None else VerifyKey(b64d(entry.key))


def agency(node: str, fed: Federation, roster: TrustedRoster | None) -> str:
    """The agency of `node`: from its current entry, or, for a node no longer active, its roster v2 entry."""
    try:
        return fed.node(node).agency
    except UnknownPeer:
        if roster is None:
            raise
        return roster.node(node).agency


def revoked_as_of(roster: TrustedRoster, node: str, version: int) -> bool:
    """Whether `roster` (version `version` or later) says `node` was revoked in version `version`.

    Revocation is final (6a.5), so every later version gives the same answer: receivers that
    hold different versions agree."""
    try:
        entry = roster.node(node)
    except UnknownPeer:
        return False
    return entry.status == "revoked" and entry.since <= version


def successor(
    owner: str, members: Mapping[NodeId, frozenset[Right]], roster: TrustedRoster, version: int
) -> NodeId | None:
    """The one node that may take over from `owner`: the member with `admin`, other than the
    owner, that roster version `version` does not revoke, first by node id; None if there is none."""
    heirs = sorted(
        n for n, rights in members.items() if "admin" in rights and n != owner and not revoked_as_of(roster, n, version)
    )
    return heirs[0] if heirs else None


def check_handover(
    owner: str,
    members: Mapping[NodeId, frozenset[Right]],
    event: ChannelEvent,
    change: Handover,
    roster: TrustedRoster | None,
) -> None:
    """7.5's rules for a handover applied to a state owned by `owner` with `members`: None, or HandoverRefused.

    The signature (by `event.owner`) and the log's `pos` and `prev` are checked by the caller."""
    if roster is None:
        raise HandoverRefused("a handover needs a roster v2 version: a v1 roster revokes no node")
    if change.node != owner:
        raise HandoverRefused(f"the handover is from {change.node!r}, but {owner!r} owns the channel")
    if change.roster > roster.version:
        raise HandoverRefused(
            f"the handover cites roster version {change.roster} and this node holds {roster.version}: "
            "it takes the handover once it holds that version"
        )
    if not revoked_as_of(roster, owner, change.roster):
        raise HandoverRefused(f"the owner {owner!r} is not revoked in roster version {change.roster}")
    heir = successor(owner, members, roster, change.roster)
    if event.owner != heir:
        raise HandoverRefused(
            f"{event.owner!r} is not the successor of {owner!r}: "
            + (f"{heir!r} is (the first admin member by id)" if heir else "the channel has no admin member left")
        )


__all__ = ["agency", "check_handover", "revoked_as_of", "signing_key", "successor"]
