"""Channel state: a linear log of owner-signed events, folded into members and rights.

The owner node orders every change, so there is one history and nothing to resolve: an event
is valid only at the position right after the one it chains to.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from pydantic import ValidationError

from exchange.crypto import SigningKey, canonical_json, sha256
from exchange.errors import InvalidInput, NotAMember, OwnerRevoked
from exchange.model import (
    Accept,
    Acceptance,
    ChannelEvent,
    ChannelPolicy,
    Close,
    Create,
    GrantHistory,
    Handling,
    Handover,
    Invite,
    NodeId,
    Remove,
    Right,
    SetExport,
    SetRights,
    first_error,
)
from exchange.protocol.handover import agency, check_handover, signing_key
from exchange.protocol.roster import Federation
from exchange.protocol.rosterchain import TrustedRoster
from exchange.protocol.signing import sign, verify

DOMAIN = "channel-event"
ACCEPT_DOMAIN = "channel-accept"
ALL_RIGHTS: frozenset[Right] = frozenset(("read", "post", "admin"))


def event_hash(event: ChannelEvent) -> str:
    """The hash that bulletins cite and the next event chains to (signature included)."""
    return sha256(canonical_json(event.model_dump(mode="json"))).hex()


def sign_event(
    *, channel: str, owner: str, pos: int, prev: str | None, at: str, change: dict[str, Any], key: SigningKey
) -> ChannelEvent:
    body = {"v": 1, "channel": channel, "owner": owner, "pos": pos, "prev": prev, "at": at, "change": change}
    body["signer"] = key.kid
    try:
        return ChannelEvent.model_validate({**body, "signature": sign(DOMAIN, body, key)})
    except ValidationError as exc:
        raise InvalidInput(f"channel event does not match the schema: {first_error(exc)}") from exc


def sign_acceptance(channel: str, node: str, invite_hash: str, key: SigningKey) -> Acceptance:
    body = {"channel": channel, "node": node, "invite": invite_hash, "signer": key.kid}
    try:
        return Acceptance.model_validate({**body, "signature": sign(ACCEPT_DOMAIN, body, key)})
    except ValidationError as exc:
        raise InvalidInput(f"acceptance does not match the schema: {first_error(exc)}") from exc


@dataclass(frozen=True)
class ChannelState:
    """Who may do what in a channel, as of one position of its log."""

    channel: str
    owner: NodeId
    pos: int
    hash: str
    title: str
    purpose: str
    policy: ChannelPolicy
    default_handling: Handling
    ends: str | None
    members: dict[NodeId, frozenset[Right]]
    invited: dict[NodeId, tuple[frozenset[Right], str]] = field(default_factory=dict)
    history_grants: frozenset[NodeId] = frozenset()
    closed: bool = False
    # Every node the log has ever named: they may fetch the log, to learn their own removal.
    involved: frozenset[NodeId] = frozenset()
    # The owner's set-export rule: may TLP:AMBER+STRICT bulletins leave a member's node as STIX?
    export_amber_strict: bool = False

    @cached_property
    def readers(self) -> list[NodeId]:
        # Asked several times per post (at 200 members, 200 steps each): made once per state,
        # which is never changed after it is made (`apply` makes a new one). Not to be mutated.
        return sorted(n for n, rights in self.members.items() if "read" in rights)

    def rights(self, node: str) -> frozenset[Right]:
        return self.members.get(NodeId(node), frozenset())

    def require(self, node: str, right: Right) -> None:
        """Return None if `node` holds `right` here, else raise NotAMember."""
        if right not in self.rights(node):
            raise NotAMember(f"node {node!r} lacks the {right} right in channel {self.channel!r}")


def _admitted(fed: Federation, policy: ChannelPolicy, node: str, roster: TrustedRoster | None = None) -> None:
    kind = agency(node, fed, roster)
    if kind not in policy.agencies:
        raise InvalidInput(f"channel policy excludes {node!r} ({kind})")


def check_signature(event: ChannelEvent, fed: Federation, roster: TrustedRoster | None = None) -> None:
    """That the owner the event names signed it, with a key of its in the roster (`signing_key`):
    InvalidInput or BadSignature otherwise. Whether that owner may sign it is `apply_event`'s."""
    body = event.model_dump(mode="json", exclude={"signature"})
    key = signing_key(event.owner, event.signer, fed, roster)  # a log is replayed from its start (6a.13)
    if key is None:
        raise InvalidInput("channel event is not signed with the owner's roster key")
    verify(DOMAIN, body, event.signature, key)


def apply_event(
    state: ChannelState | None, event: ChannelEvent, fed: Federation, roster: TrustedRoster | None = None
) -> ChannelState:
    """Check one event against the state before it and return the state after it.

    `roster`: the held roster v2 version, if any: it keeps the keys of nodes no longer active
    (what they signed stays valid) and says which owners are revoked (a handover, 7.5).
    """
    check_signature(event, fed, roster)
    change = event.change
    new_hash = event_hash(event)
    if state is None:
        if event.pos != 0 or event.prev is not None or not isinstance(change, Create):
            raise InvalidInput("a channel log must start with a create event at position 0")
        _admitted(fed, change.policy, event.owner, roster)
        owner = NodeId(event.owner)
        return ChannelState(
            channel=event.channel,
            owner=owner,
            pos=0,
            hash=new_hash,
            title=change.title,
            purpose=change.purpose,
            policy=change.policy,
            default_handling=change.default_handling,
            ends=change.ends,
            members={owner: ALL_RIGHTS},
            involved=frozenset({owner}),
        )
    if event.channel != state.channel:
        raise InvalidInput("channel event belongs to another channel or owner")
    if isinstance(change, Handover):
        check_handover(state.owner, state.members, event, change, roster)
    elif event.owner != state.owner:
        if roster is not None and event.owner in roster.node_ids("revoked"):
            raise OwnerRevoked(f"{event.owner!r} is revoked and does not own channel {state.channel!r}")
        raise InvalidInput("channel event belongs to another channel or owner")
    if event.pos != state.pos + 1 or event.prev != state.hash:
        raise InvalidInput("channel event does not extend the log it claims to")
    if state.closed:
        raise InvalidInput("the channel is closed")
    members = dict(state.members)
    invited = dict(state.invited)
    grants = set(state.history_grants)
    closed = False
    export = state.export_amber_strict
    named: str | None = None
    owner = state.owner
    if isinstance(change, Create):
        raise InvalidInput("a channel is created only once")
    if isinstance(change, Invite):
        named = change.node
        if NodeId(change.node) in members or NodeId(change.node) in invited:
            raise InvalidInput(f"{change.node!r} is already a member or invited")
        _admitted(fed, state.policy, change.node, roster)
        invited[NodeId(change.node)] = (frozenset(change.rights), new_hash)
    elif isinstance(change, Accept):
        acc = change.acceptance
        named = acc.node
        pending = invited.pop(NodeId(acc.node), None)
        if pending is None or acc.channel != state.channel or acc.invite != pending[1]:
            raise InvalidInput(f"{acc.node!r} accepts an invitation it does not hold")
        signer = signing_key(acc.node, acc.signer, fed, roster)
        if signer is None:
            raise InvalidInput("acceptance is not signed with the invitee's roster key")
        verify(ACCEPT_DOMAIN, acc.model_dump(mode="json", exclude={"signature"}), acc.signature, signer)
        _admitted(fed, state.policy, acc.node, roster)
        members[NodeId(acc.node)] = pending[0]
    elif isinstance(change, SetRights):
        named = change.node
        if NodeId(change.node) not in members or change.node == state.owner:
            raise InvalidInput(f"{change.node!r} is not a member whose rights can change")
        members[NodeId(change.node)] = frozenset(change.rights)
        if "read" not in change.rights:  # no longer a reader: its history grant ends, as at a removal
            grants.discard(NodeId(change.node))
    elif isinstance(change, Remove):
        named = change.node
        if change.node == state.owner:
            raise InvalidInput("the owner cannot be removed; close the channel instead")
        if members.pop(NodeId(change.node), None) is None and invited.pop(NodeId(change.node), None) is None:
            raise InvalidInput(f"{change.node!r} is neither a member nor invited")
        grants.discard(NodeId(change.node))
    elif isinstance(change, GrantHistory):
        named = change.node
        if "read" not in members.get(NodeId(change.node), frozenset()):
            raise InvalidInput(f"{change.node!r} is not a reader of the channel")
        grants.add(NodeId(change.node))
    elif isinstance(change, Close):
        closed = True
    elif isinstance(change, SetExport):
        export = change.amber_strict
    elif isinstance(change, Handover):  # the revoked owner leaves; its successor holds every right
        named = change.node
        members.pop(state.owner, None)
        grants.discard(state.owner)
        owner = NodeId(event.owner)
        members[owner] = ALL_RIGHTS
    involved = state.involved | ({NodeId(named)} if named else set())
    return replace(
        state,
        owner=owner,
        pos=event.pos,
        hash=new_hash,
        members=members,
        invited=invited,
        history_grants=frozenset(grants),
        closed=closed,
        involved=involved,
        export_amber_strict=export,
    )
