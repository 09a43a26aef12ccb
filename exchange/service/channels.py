"""A node's view of its channels: every log it takes part in, the changes it orders as owner,
and the events it pushes to, and fetches from, other nodes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.audit import events as ev
from exchange.clock import timestamp
from exchange.crypto import SigningKey, canonical_json, strict_loads
from exchange.errors import (
    Conflict,
    Forbidden,
    HandoverRefused,
    InvalidEnvelope,
    InvalidInput,
    NotFound,
    OwnerRevoked,
    PeerError,
    PeerRefused,
    StateUnavailable,
)
from exchange.model import Acceptance, ChannelEvent, NodeId, StateRef
from exchange.protocol.channel import (
    ChannelState,
    apply_event,
    check_signature,
    event_hash,
    sign_acceptance,
    sign_event,
)
from exchange.protocol.handover import revoked_as_of, successor
from exchange.protocol.roster import Federation
from exchange.protocol.rosterchain import TrustedRoster
from exchange.service.outbox import EventRef
from exchange.service.transport import PeerTransport
from exchange.service.users import User
from exchange.store import OUTBOX_QUEUED, AuditBuffer, Store, bulletins, channel_events, outbox

Wake = Callable[[Sequence[str]], None]  # new outbox items for these destinations
Held = Callable[[], TrustedRoster | None]  # the roster v2 version this node holds now, if any
RETRYABLE_REFUSALS = frozenset({408, 425, 429})  # 4xx that mean "not now" rather than "never"


class ChannelBook:
    """Channel logs held by one node, with the rules for changing and sharing them."""

    def __init__(
        self,
        me: NodeId,
        fed: Federation,
        key: SigningKey,
        store: Store,
        transport: PeerTransport,
        wake: Wake,
        held: Held = lambda: None,
    ) -> None:
        self.me = me
        self.fed = fed
        self.held = held
        self.key = key
        self.store = store
        self.transport = transport
        self._wake = wake
        self._states: dict[str, list[ChannelState]] = {}
        self._events: dict[str, list[ChannelEvent]] = {}
        self._lock = asyncio.Lock()

    # -- reading ----------------------------------------------------------------------------

    async def load(self) -> None:
        async with self.store.read() as conn:
            rows = await conn.execute(
                sa.select(channel_events.c.event).order_by(channel_events.c.channel, channel_events.c.pos)
            )
            for (raw,) in rows:
                self._append(ChannelEvent.model_validate(strict_loads(raw)))

    async def refresh(self, channel: str | None = None) -> int:
        """Take in the events of `channel` (None: of every channel) that another worker process
        stored since (exchange.service.worker_sync); how many."""
        query = sa.select(channel_events.c.channel, channel_events.c.pos, channel_events.c.event)
        async with self._lock:
            if channel is not None:
                query = query.where(
                    channel_events.c.channel == channel, channel_events.c.pos >= len(self._events.get(channel, []))
                )
            async with self.store.read() as conn:
                rows = (await conn.execute(query.order_by(channel_events.c.channel, channel_events.c.pos))).all()
            before = sum(map(len, self._events.values()))
            for name, pos, raw in rows:
                if pos == len(self._events.get(name, [])):
                    self._append(ChannelEvent.model_validate(strict_loads(raw)))
            return sum(map(len, self._events.values())) - before

    def _append(self, event: ChannelEvent) -> ChannelState:
        history = self._states.get(event.channel, [])
        state = apply_event(history[-1] if history else None, event, self.fed, self.held())
        self._states[event.channel] = [*history, state]
        self._events.setdefault(event.channel, []).append(event)
        return state

    def state(self, channel: str, pos: int | None = None) -> ChannelState:
        """The latest state of a channel, or its state at log position `pos`."""
        history = self._states.get(channel)
        if not history:
            raise NotFound(f"unknown channel {channel!r}")
        if pos is None:
            return history[-1]
        if pos >= len(history):
            raise NotFound(f"channel {channel!r} has no state at position {pos}")
        return history[pos]

    def all(self) -> list[ChannelState]:
        return [h[-1] for _, h in sorted(self._states.items())]

    def events(self, channel: str, after: int = -1) -> list[ChannelEvent]:
        return self._events.get(channel, [])[after + 1 :]

    def events_for_peer(self, peer: str, channel: str, after: int) -> list[ChannelEvent]:
        """The log for a partner that the log has named (member, invitee or removed member)."""
        state = self.state(channel)
        if NodeId(peer) not in state.involved:
            raise Forbidden(f"{peer!r} takes no part in channel {channel!r}")
        return self.events(channel, after)

    # -- learning from other nodes ----------------------------------------------------------

    async def import_events(self, events: Sequence[ChannelEvent], source: NodeId | None = None) -> int:
        """Verify events against the logs held here and keep the new ones; return how many.

        An event past a gap makes us fetch the missing part from the channel's owner first. A new
        event by an owner that the held roster no longer lists as active is taken only as history
        below a handover (docs/protocol.md, 7.5): fetched from `source` (the partner that sent
        it) if the handover did not come with it, else OwnerRevoked. A log a partner pushes
        (`source`) that this node does not hold yet is kept only if it names this node (as owner,
        member, invitee or removed member) once the batch is applied: InvalidInput otherwise.
        """
        fresh: list[tuple[ChannelEvent, ChannelState]] = []
        async with self._lock, self._undo_on_error():
            held_before = set(self._events)
            for event in sorted(events, key=lambda e: (e.channel, e.pos)):
                known = self._events.get(event.channel, [])
                if event.pos < len(known):
                    if event_hash(known[event.pos]) != event_hash(event):
                        raise InvalidInput(f"channel {event.channel}: a different event at position {event.pos}")
                    continue
                if event.pos > len(known):
                    if not self.fed.listed(event.owner):  # no node to ask: a refusal, not an outage to retry
                        raise InvalidInput(f"channel {event.channel}: its owner {event.owner} is not in the roster")
                    # Signed by the owner it names before that owner is asked for anything: else
                    # a partner pushing forged events had this node fetch logs from third parties.
                    check_signature(event, self.fed, self.held())
                    await self._fetch_missing(event.owner, event.channel, len(known) - 1, event.pos - 1, fresh)
                try:
                    fresh.append((event, self._append(event)))
                except HandoverRefused:
                    self._roster_for(event)
                    raise
            await self._require_handover(fresh, source)
            if source is not None:  # pushed: a log new here must name this node, once the batch is applied
                for channel in sorted({e.channel for e, _ in fresh} - held_before):
                    if self.me not in self.state(channel).involved:
                        raise InvalidInput(
                            f"channel {channel}: its log does not name this node, which keeps no such log"
                        )
            if fresh:
                await self._persist(fresh, queue=False)
        return len(fresh)

    def _roster_for(self, event: ChannelEvent) -> None:
        """A handover refused for citing a roster version newer than the held one (7.5 rule 3) is
        judged again once that version is here: StateUnavailable (503), which its sender retries
        while gossip (6a.11) brings the version, rather than a refusal the sender would give up on."""
        held = self.held()
        if event.change.type == "handover" and held is not None and event.change.roster > held.version:
            raise StateUnavailable(
                f"channel {event.channel!r}: the handover cites roster version {event.change.roster}, "
                f"this node holds {held.version}: retry once it holds that version"
            )

    async def _require_handover(self, fresh: list[tuple[ChannelEvent, ChannelState]], source: NodeId | None) -> None:
        """7.5: every new event of an owner that is not active in the held roster lies below a handover."""
        held = self.held()
        if held is None:
            return
        for channel in sorted({e.channel for e, _ in fresh}):
            stale = [e for e, _ in fresh if e.channel == channel and held.node(e.owner).status != "active"]
            if not stale or self.state(channel).owner != stale[-1].owner:
                continue
            if source is not None and source != stale[-1].owner:
                with contextlib.suppress(StateUnavailable, InvalidEnvelope):
                    await self._fetch_missing(source, channel, self.state(channel).pos, None, fresh)
            if self.state(channel).owner == stale[-1].owner:
                raise OwnerRevoked(
                    f"channel {channel!r}: event {stale[-1].pos} is signed by its owner {stale[-1].owner}, "
                    f"{held.node(stale[-1].owner).status} in roster version {held.version}, and no handover follows it"
                )

    async def import_provisioned(self, logs: Sequence[Sequence[ChannelEvent]]) -> None:
        """Channel logs provisioned by `federation init`: keep those that name this node."""
        for events in logs:
            named = {e.owner for e in events} | {getattr(e.change, "node", None) for e in events}
            named |= {e.change.acceptance.node for e in events if e.change.type == "accept"}
            if self.me in named:
                await self.import_events(events)

    @contextlib.asynccontextmanager
    async def _undo_on_error(self) -> AsyncIterator[None]:
        """Keep memory equal to the database: forget events appended by a step that failed."""
        lengths = {c: len(e) for c, e in self._events.items()}
        try:
            yield
        except BaseException:
            for channel in list(self._events):
                keep = lengths.get(channel, 0)
                del self._events[channel][keep:]
                del self._states[channel][keep:]
                if not keep:
                    del self._events[channel], self._states[channel]
            raise

    async def _fetch_missing(
        self, owner: str, channel: str, after: int, upto: int | None, fresh: list[tuple[ChannelEvent, ChannelState]]
    ) -> None:
        """Fetch and apply positions `after` + 1 to `upto` (None: all it has) of a log from `owner`,
        the node that orders it now (or a partner that claims to hold more of it)."""
        try:
            raw = await self.transport.fetch(NodeId(owner), f"/fed/v1/channels/{channel}/events?after={after}")
        except PeerRefused as exc:
            if exc.status in RETRYABLE_REFUSALS:
                raise StateUnavailable(f"channel {channel!r}: owner {owner} busy: {exc.detail}") from exc
            # The owner answered, and will answer the same again (this node takes no part in the
            # channel, or the channel does not exist): a permanent refusal, not an outage to retry.
            raise InvalidEnvelope(f"channel {channel!r}: its owner {owner} refused its log: {exc.detail}") from exc
        except PeerError as exc:
            raise StateUnavailable(f"channel {channel!r}: owner {owner} unreachable: {exc.detail}") from exc
        try:
            got = [ChannelEvent.model_validate(e) for e in raw["events"]]
        except (ValueError, TypeError, KeyError) as exc:
            raise StateUnavailable(f"channel {channel!r}: owner {owner} sent a malformed log") from exc
        for event in got:  # the owner of an event is checked by the log (a handover changes it)
            if event.channel != channel:
                raise InvalidInput("the owner sent events of another channel")
            if event.pos == len(self._events.get(channel, [])) and (upto is None or event.pos <= upto):
                fresh.append((event, self._append(event)))
        if upto is not None and len(self._events.get(channel, [])) <= upto:
            raise InvalidInput(f"channel {channel!r}: its owner {owner} has no position {upto}")

    async def ensure(self, channel: str, ref: StateRef) -> ChannelState:
        """The state a bulletin (or an epoch record, or a grant) cites, fetched from the node the
        reference names as owner if it is not known yet. What is fetched is kept only if it leads
        to the cited state (its owner and hash), follows 7.5's rule for a revoked owner's events,
        and, for a log new here, names this node, as `import_events` requires of a pushed log:
        the reference is the sender's to choose, so a log it serves is taken on those terms or not
        at all (InvalidInput, OwnerRevoked). Another worker of this node (PostgreSQL) may have
        stored those events first: then they are read from the database, not a 500."""
        try:
            return await self._ensure(channel, ref)
        except sa.exc.IntegrityError:
            if not self.store.shared:
                raise
        await self.refresh(channel)
        return await self._ensure(channel, ref)

    async def _ensure(self, channel: str, ref: StateRef) -> ChannelState:
        history = self._states.get(channel, [])
        if ref.pos >= len(history):
            fresh: list[tuple[ChannelEvent, ChannelState]] = []
            async with self._lock, self._undo_on_error():
                held_before = channel in self._events
                if ref.pos >= len(self._states.get(channel, [])):
                    await self._fetch_missing(ref.owner, channel, len(history) - 1, ref.pos, fresh)
                if fresh:
                    _require_cited(self.state(channel, ref.pos), ref)
                    await self._require_handover(fresh, NodeId(ref.owner))
                    if not held_before and self.me not in self.state(channel).involved:
                        raise InvalidInput(
                            f"channel {channel}: its log does not name this node, which keeps no such log"
                        )
                    await self._persist(fresh, queue=False)
        state = self.state(channel, ref.pos)
        _require_cited(state, ref)
        return state

    async def _persist(self, items: list[tuple[ChannelEvent, ChannelState]], *, queue: bool) -> None:
        """Store events, audit them, cancel sends to removed members; as owner, queue them out."""

        async def job(conn: AsyncConnection, audit: AuditBuffer) -> list[str]:
            dests: set[str] = set()
            for event, state in items:
                await conn.execute(
                    sa.insert(channel_events).values(
                        channel=event.channel,
                        pos=event.pos,
                        hash=state.hash,
                        event=canonical_json(event.model_dump(mode="json")).decode(),
                    )
                )
                change = event.change.model_dump(mode="json")
                if "acceptance" in change:
                    change = {"type": "accept", "node": change["acceptance"]["node"]}
                audit.add(
                    ev.ChannelChanged(
                        event=ev.CHANNEL_CHANGED,
                        at=timestamp(),
                        channel=event.channel,
                        pos=event.pos,
                        hash=state.hash,
                        owner=event.owner,
                        change=change,
                    )
                )
                if event.change.type == "remove":
                    # Nothing more goes to a removed member, including what was queued for it.
                    # Each of its queued items looked up by its bulletin (a seek each), not each of
                    # the channel's bulletins in the outbox: as many as it has queued, however many
                    # the channel holds.
                    gone = event.change.node
                    of_channel = sa.exists().where(bulletins.c.id == outbox.c.ref, bulletins.c.channel == event.channel)
                    await conn.execute(
                        sa.update(outbox)
                        .where(outbox.c.dest == gone, OUTBOX_QUEUED, of_channel)
                        .values(state="cancelled", detail=f"removed from {event.channel}")
                    )
                if queue:
                    before = self.state(event.channel, event.pos - 1) if event.pos else None
                    dests |= await self._queue_event(conn, event, state, before)
            return sorted(dests)

        dests = await self.store.write(job)
        self._wake(dests)

    async def _queue_event(
        self, conn: AsyncConnection, event: ChannelEvent, after: ChannelState, before: ChannelState | None
    ) -> set[str]:
        """Queue an event for everyone it concerns; a node new to the log gets the whole log."""
        old: set[str] = set(before.members) | set(before.invited) if before else set()
        new: set[str] = set(after.members) | set(after.invited)
        named = getattr(event.change, "node", None) or getattr(getattr(event.change, "acceptance", None), "node", None)
        dests = (old | new | ({named} if named else set())) - {self.me}
        wanted = [
            (dest, EventRef(event.channel, p).encode())
            for dest in sorted(dests)
            for p in range(0 if dest not in old else event.pos, event.pos + 1)
        ]
        # A node that comes back (re-invited after a removal) already has part of the log queued.
        query = sa.select(outbox.c.dest, outbox.c.ref).where(
            outbox.c.kind == "event", outbox.c.dest.in_(dests), outbox.c.ref.in_({r for _, r in wanted})
        )
        present = {(r[0], r[1]) for r in await conn.execute(query)}
        rows = [{"dest": d, "kind": "event", "ref": r} for d, r in wanted if (d, r) not in present]
        if rows:
            await conn.execute(sa.insert(outbox), rows)
        return dests

    # -- changes this node orders as owner --------------------------------------------------

    async def _ordered(self, channel: str, order: Callable[[], Awaitable[ChannelState]]) -> ChannelState:
        """Run an owner's `order` (it signs the next event from this process's copy of the log).
        Another worker of this node (PostgreSQL) may have stored an event at that position first:
        then the log is read again and the order made once more, on top of that event; a second
        clash is a Conflict (409), not an internal error."""
        try:
            return await order()
        except sa.exc.IntegrityError:
            if not self.store.shared:
                raise
        await self.refresh(channel)
        try:
            return await order()
        except sa.exc.IntegrityError as exc:
            raise Conflict(f"channel {channel!r} changed meanwhile on another worker; try again") from exc

    async def create(self, user: User, channel: str, create: dict[str, Any]) -> ChannelState:
        user.require("admin")
        return await self._ordered(channel, lambda: self._create(channel, create))

    async def _create(self, channel: str, create: dict[str, Any]) -> ChannelState:
        async with self._lock:
            if channel in self._states:
                raise Conflict(f"channel {channel!r} exists")
            event = sign_event(
                channel=channel,
                owner=self.me,
                pos=0,
                prev=None,
                at=timestamp(),
                change={"type": "create", **create},
                key=self.key,
            )
            async with self._undo_on_error():
                state = self._append(event)
                await self._persist([(event, state)], queue=True)
            return state

    async def change(self, user: User | None, channel: str, change: dict[str, Any]) -> ChannelState:
        """Order one change of a channel this node owns (user None: on a partner's signed request)."""
        if user is not None:
            user.require("admin")
        return await self._ordered(channel, lambda: self._change(channel, change))

    async def _change(self, channel: str, change: dict[str, Any]) -> ChannelState:
        async with self._lock:
            current = self.state(channel)
            if current.owner != self.me:
                raise Forbidden(f"only the owner node ({current.owner}) changes channel {channel!r}")
            event = sign_event(
                channel=channel,
                owner=self.me,
                pos=current.pos + 1,
                prev=current.hash,
                at=timestamp(),
                change=change,
                key=self.key,
            )
            async with self._undo_on_error():
                state = self._append(event)
                await self._persist([(event, state)], queue=True)
            return state

    async def hand_over(self, channel: str) -> ChannelState:
        """As the successor of a revoked owner, take the channel over (docs/protocol.md, 7.5): sign
        the `handover` that continues its log. HandoverRefused if this node is not the successor."""
        held = self.held()
        async with self._lock:
            current = self.state(channel)
            event = sign_event(
                channel=channel,
                owner=self.me,
                pos=current.pos + 1,
                prev=current.hash,
                at=timestamp(),
                change={"type": "handover", "node": current.owner, "roster": held.version if held else 1},
                key=self.key,
            )
            async with self._undo_on_error():
                state = self._append(event)  # apply_event checks every rule of 7.5 first
                await self._persist([(event, state)], queue=True)
            return state

    def successor_of(self, state: ChannelState) -> NodeId | None:
        """Who takes `state`'s channel over under the held roster: None while its owner is not revoked."""
        held = self.held()
        if held is None or state.closed or not revoked_as_of(held, state.owner, held.version):
            return None
        return successor(state.owner, state.members, held, held.version)

    # -- joining ----------------------------------------------------------------------------

    async def accept(self, user: User, channel: str) -> ChannelState:
        """As an invited node: sign our consent and hand it to the owner, who orders it."""
        user.require("admin")
        state = self.state(channel)
        pending = state.invited.get(self.me)
        if pending is None:
            raise Forbidden(f"this node holds no invitation to {channel!r}")
        acceptance = sign_acceptance(channel, self.me, pending[1], self.key)
        body = canonical_json(acceptance.model_dump(mode="json"))
        answer = await self.transport.send(state.owner, f"/fed/v1/channels/{channel}/accept", body)
        await self.import_events([ChannelEvent.model_validate(e) for e in answer["events"]])
        return self.state(channel)

    async def receive_acceptance(self, peer: str, channel: str, raw: Any) -> list[ChannelEvent]:
        """As owner: a partner accepts our invitation; order it and return the log it is missing."""
        try:
            acceptance = Acceptance.model_validate(raw)
        except ValueError as exc:
            raise InvalidInput(f"malformed acceptance: {exc}") from exc
        if acceptance.node != peer or acceptance.channel != channel:
            raise Forbidden("a node may only accept for itself")
        state = await self.change(None, channel, {"type": "accept", "acceptance": acceptance.model_dump(mode="json")})
        return self.events(channel, -1)[: state.pos + 1]


def _require_cited(state: ChannelState, ref: StateRef) -> None:
    if state.owner != ref.owner or state.hash != ref.hash:
        raise InvalidInput("the cited channel state does not match the channel's log")


__all__ = ["ChannelBook"]
