"""Channel state: a linear log of owner-signed events, folded into members and rights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from exchange.crypto import SigningKey, canonical_json, sha256
from exchange.errors import InvalidInput, NotAMember
from exchange.model import ChannelEvent, ChannelPolicy, Handling, NodeId, Right
from exchange.protocol.roster import Federation
from exchange.protocol.signing import sign, verify

DOMAIN = "channel-event"


def event_hash(event: ChannelEvent) -> str:
    """The hash that bulletins cite and the next event chains to (signature included)."""
    return sha256(canonical_json(event.model_dump(mode="json"))).hex()


def sign_event(fields: dict[str, Any], key: SigningKey) -> ChannelEvent:
    body = {**fields, "signer": key.kid}
    return ChannelEvent.model_validate({**body, "signature": sign(DOMAIN, body, key)})


@dataclass(frozen=True)
class ChannelState:
    """Who may do what in a channel, as of one position of its log."""

    channel: str
    owner: NodeId
    pos: int
    hash: str
    title: str
    policy: ChannelPolicy
    default_handling: Handling
    members: dict[NodeId, frozenset[Right]]

    @property
    def readers(self) -> list[NodeId]:
        return sorted(n for n, rights in self.members.items() if "read" in rights)

    def require(self, node: str, right: Right) -> None:
        """Return None if `node` holds `right` here, else raise NotAMember."""
        if right not in self.members.get(NodeId(node), frozenset()):
            raise NotAMember(f"node {node!r} lacks the {right} right in channel {self.channel!r}")


def apply_event(state: ChannelState | None, event: ChannelEvent, fed: Federation) -> ChannelState:
    """Check one event against the state before it and return the state after it."""
    body = event.model_dump(mode="json", exclude={"signature"})
    verify(DOMAIN, body, event.signature, fed.verify_key(event.owner))
    if fed.node(event.owner).signing_kid != event.signer:
        raise InvalidInput("channel event signed by a key that is not the owner's current key")
    if state is None:
        if event.pos != 0 or event.prev is not None or event.type != "create":
            raise InvalidInput("a channel log must start with a create event at position 0")
    else:
        if event.channel != state.channel or event.owner != state.owner:
            raise InvalidInput("channel event belongs to another channel or owner")
        if event.pos != state.pos + 1 or event.prev != state.hash:
            raise InvalidInput("channel event does not extend the log it claims to")
    members: dict[NodeId, frozenset[Right]] = {NodeId(n): frozenset(r) for n, r in event.members.items()}
    if "admin" not in members.get(NodeId(event.owner), frozenset()):
        raise InvalidInput("the owner must hold the admin right")
    for node in members:
        agency = fed.node(node).agency
        if agency not in event.policy.agencies:
            raise InvalidInput(f"channel policy excludes {node!r} ({agency})")
    return ChannelState(
        channel=event.channel,
        owner=NodeId(event.owner),
        pos=event.pos,
        hash=event_hash(event),
        title=event.title,
        policy=event.policy,
        default_handling=event.default_handling,
        members=members,
    )
