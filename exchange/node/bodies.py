"""What the client API takes: the request bodies of its routes (strict pydantic models, which the
OpenAPI document describes) and the bounds of its pages."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, StringConstraints

from exchange.model import ChannelIdStr, Create, NodeIdStr, Rights

_API = ConfigDict(extra="forbid", strict=True)

MAX_BATCH = 1000  # items of each kind in one federation transaction
PAGE_LIMIT = 500  # bulletins on one page of the list, at most
AUDIT_PAGE_LIMIT = 1000  # audit entries on one page, at most
CATCHUP_LIMIT = 1000  # envelopes on one catch-up page, at most


class NewChannel(Create):
    """A channel to create: its id, and the create event's fields (`type` may be left out)."""

    id: ChannelIdStr


class NodeRights(BaseModel):
    """invite and rights: the node, and the rights it gets."""

    model_config = _API
    node: NodeIdStr
    rights: Rights


class NodeOnly(BaseModel):
    """remove and grant-history: the node."""

    model_config = _API
    node: NodeIdStr


class ExportRule(BaseModel):
    """export: whether TLP:AMBER+STRICT bulletins of the channel may leave members' nodes as STIX."""

    model_config = _API
    amber_strict: bool


class NewWebhook(BaseModel):
    """A webhook to register: the URL each new bulletin's metadata is POSTed to."""

    model_config = _API
    url: Annotated[str, StringConstraints(min_length=8, max_length=2048, pattern=r"^https?://[\x21-\x7e]+$")]


class Assignment(BaseModel):
    """An administrator assigns a local contact point to a channel (assigned: false takes it away)."""

    model_config = _API
    user: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[^\x00-\x1f\x7f]+$")]
    assigned: bool = True


class Forward(BaseModel):
    """The channel to forward a bulletin to."""

    model_config = _API
    channel: ChannelIdStr


# Channel changes: the path's last segment, the change it orders, and its body (None: no body).
MEMBERSHIP: dict[str, tuple[str, type[NodeRights] | type[NodeOnly] | type[ExportRule] | None]] = {
    "invite": ("invite", NodeRights),
    "rights": ("set-rights", NodeRights),
    "remove": ("remove", NodeOnly),
    "grant-history": ("grant-history", NodeOnly),
    "close": ("close", None),
    "export": ("set-export", ExportRule),
}
