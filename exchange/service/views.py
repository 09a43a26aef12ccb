"""What the application layer returns to adapters: typed views, turned into JSON at the edge."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from pydantic import BaseModel

from exchange.model import BulletinId, ChannelId, NodeId, NodeIdStr, Rights
from exchange.protocol.channel import ChannelState


@dataclass(frozen=True)
class View:
    """A view that adapters serialise as it is."""

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Posted(View):
    """A bulletin this node just posted."""

    id: BulletinId
    channel: ChannelId
    seq: int
    recipients: list[NodeId]
    created: str


@dataclass(frozen=True)
class BulletinSummary(View):
    """One line of an inbox: metadata and the title, never the body."""

    cursor: int
    id: BulletinId
    channel: ChannelId
    author: NodeId
    seq: int
    tlp: str
    created: str
    kind: str
    title: str


@dataclass(frozen=True)
class BulletinView(View):
    """One bulletin in full, as a local reader sees it, with the receipts held for it."""

    id: BulletinId
    channel: ChannelId
    author: NodeId
    author_name: str
    seq: int
    created: str
    signature_verified: bool
    # the author's roster key id that the signature verified under: a former key of its for a
    # bulletin signed before a rotation, not the key the roster lists now
    signer: str
    recipients: list[NodeId]
    bulletin: dict[str, Any]
    receipts: list[dict[str, Any]]


def channel_view(s: ChannelState) -> dict[str, Any]:
    """A channel's current state as the API and the console show it."""
    return {
        "id": s.channel,
        "title": s.title,
        "purpose": s.purpose,
        "owner": s.owner,
        "pos": s.pos,
        "hash": s.hash,
        "agencies": list(s.policy.agencies),
        "default_handling": s.default_handling.model_dump(),
        "ends": s.ends,
        "closed": s.closed,
        "members": {n: sorted(r) for n, r in sorted(s.members.items())},
        "invited": {n: sorted(r) for n, (r, _) in sorted(s.invited.items())},
        "history_grants": sorted(s.history_grants),
        "export_amber_strict": s.export_amber_strict,
    }


class MemberChange(BaseModel):
    """A membership change an administrator asks for: the node, and its rights where they apply."""

    node: NodeIdStr
    rights: Rights | None = None


# -- the console's inbox: listings with unread marks, references, search, receipts -------------


@dataclass(frozen=True)
class InboxLine(BulletinSummary):
    """An inbox or search line, with whether this user has not opened it yet."""

    unread: bool


@dataclass(frozen=True)
class InboxPage(View):
    """One page of a channel's bulletins, newest first."""

    items: list[InboxLine]
    older: int | None  # `before` for the next, older page; None on the last one


@dataclass(frozen=True)
class ChannelSummary(View):
    """A channel in a user's channel list: its state, this node's rights, the user's unread count."""

    id: str
    title: str
    purpose: str
    owner: str
    pos: int
    hash: str
    agencies: list[str]
    default_handling: dict[str, Any]
    ends: str | None
    closed: bool
    members: dict[str, list[str]]
    invited: dict[str, list[str]]
    history_grants: list[str]
    export_amber_strict: bool
    my_rights: list[str]  # this node's rights in the current state
    readable: bool  # the user may open its inbox now
    unread: int = 0
    total: int = 0


@dataclass(frozen=True)
class Reference(View):
    """A bulletin that another refers to: title and place if the user may read it, else why not."""

    id: str
    visible: bool
    why: str = ""  # when not visible
    channel: str = ""
    title: str = ""
    kind: str = ""
    created: str = ""


@dataclass(frozen=True)
class ReplyTo(View):
    """What an answer to a bulletin starts from: its place and title, and its handling, which the
    answer takes unless its author chooses otherwise (its title goes into the answer's)."""

    id: str
    channel: str
    title: str
    tlp: str
    no_onward_sharing: bool


@dataclass(frozen=True)
class RecipientStatus(View):
    """What this node knows of one recipient node's receipts for a bulletin."""

    node: str
    author: bool
    received: str | None
    opened: str | None
    known: bool  # receipts go to the author's node, so a reader knows only its own


@dataclass(frozen=True)
class SearchResults(View):
    """A search over the channels the user reads."""

    channels: list[str]  # the channels the user may search in
    results: list[InboxLine]
    searched: bool  # there was something to search for
    stopped: bool  # there were older bulletins than the newest `looked_at`, which were not searched
    looked_at: int = 0  # how many of the newest bulletins a search looks at
