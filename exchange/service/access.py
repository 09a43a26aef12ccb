"""Who may read and post where: the one home of these rules for the API, the console and the CLI."""

from __future__ import annotations

import datetime as dt

from exchange.clock import utc_now
from exchange.errors import ExchangeError, Forbidden, NotFound
from exchange.model import NodeId
from exchange.protocol.channel import ChannelState
from exchange.service.channels import ChannelBook
from exchange.service.users import User


class Access:
    """Channel rights of local users, combining their assignment with this node's rights."""

    def __init__(self, me: NodeId, channels: ChannelBook) -> None:
        self.me = me
        self.channels = channels

    def node_reads(self, channel: str) -> bool:
        """This node holds the read right in the channel's latest state."""
        try:
            return "read" in self.channels.state(channel).rights(self.me)
        except NotFound:
            return False

    def require_readable(self, user: User, channel: str) -> None:
        """A contact point reads a channel if assigned to it and this node still reads it."""
        user.require_channel(channel)
        if not self.node_reads(channel):
            raise Forbidden(f"this node does not (or no longer) read channel {channel!r}")

    def readable_channels(self, user: User) -> list[str]:
        """The channels a contact point (or a feed, by TAXII) reads now, sorted."""
        user.require("contact-point", "feed")
        return [c for c in sorted(user.channels) if self.node_reads(c)]

    def may_read(self, user: User, channel: str) -> bool:
        try:
            self.require_readable(user, channel)
        except ExchangeError:
            return False
        return True

    def require_postable(self, user: User, channel: str) -> ChannelState:
        """Sender-side rules: the user's assignment, this node's post right, an open channel."""
        user.require_channel(channel)
        state = self.channels.state(channel)
        state.require(self.me, "post")
        if state.closed:
            raise Forbidden(f"channel {channel!r} is closed")
        if state.ends is not None and utc_now().date() > dt.date.fromisoformat(state.ends):
            raise Forbidden(f"channel {channel!r} ended on {state.ends}")
        return state

    def may_post(self, user: User, channel: str) -> bool:
        """Whether `require_postable` would let this user post in `channel` now."""
        try:
            self.require_postable(user, channel)
        except ExchangeError:
            return False
        return True

    def postable_channels(self, user: User) -> list[str]:
        """The channels a contact point may post in now, sorted."""
        return [c for c in sorted(user.channels) if self.may_post(user, c)]
