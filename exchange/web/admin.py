"""Pages for administrators (channel membership, users) and the partners' sync status.

Membership changes go through `ChannelBook.change` and `ChannelBook.accept` with the signed-in
user, as the API's do: the book checks the role and that this node owns the channel.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from aiohttp import web
from pydantic import ValidationError

from exchange.clock import timestamp, utc_now
from exchange.crypto.passwords import WeakPassword, check_strength
from exchange.errors import InvalidInput
from exchange.node.appkeys import SENDERS, SERVICE
from exchange.node.client_api import MemberChange, channel_view
from exchange.node.users import ROLES, add_user, assign, list_users, set_password
from exchange.store import console_sessions, user_passwords
from exchange.web.pages import redirect, render
from exchange.web.session import CONSOLE_SETTINGS, end_sessions, posted_form, signed_in

RIGHTS = ("read", "post", "admin")
ACTIONS = {"invite": "invite", "rights": "set-rights", "remove": "remove"}


async def admin_page(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    user, service = session.user, request.app[SERVICE]
    user.require("admin")
    people = await list_users(service.store)
    idle_since = timestamp(utc_now() - request.app[CONSOLE_SETTINGS].session_idle)
    async with service.store.read() as conn:
        with_password = set(await conn.scalars(sa.select(user_passwords.c.user)))
        online = set(
            await conn.scalars(
                sa.select(console_sessions.c.user)
                .where(console_sessions.c.expires > timestamp(), console_sessions.c.last_seen > idle_since)
                .distinct()
            )
        )
    states = service.channels.all()
    nodes = service.fed.roster.nodes
    channels = []
    for s in states:
        view = channel_view(s)
        named = set(s.members) | set(s.invited)
        view["invitable"] = [
            n.id for n in nodes if n.id not in named and n.agency in s.policy.agencies and n.id != service.me
        ]
        view["owned"] = s.owner == service.me
        view["invited_here"] = service.me in s.invited
        channels.append(view)
    return render(
        request,
        "admin.html",
        session=session,
        channels=channels,
        people=[
            {
                "name": p.name,
                "role": p.role,
                "channels": sorted(p.channels),
                "password": p.name in with_password,
                "online": p.name in online,
            }
            for p in people
        ],
        channel_ids=[s.channel for s in states],
        roles=ROLES,
        rights=RIGHTS,
        changed=request.query.get("changed"),
    )


async def change_membership(request: web.Request) -> web.StreamResponse:
    """Invite, change rights, remove (as owner), or accept an invitation: ordered and signed by the book."""
    session, _ = await posted_form(request)
    user, book = session.user, request.app[SERVICE].channels
    user.require("admin")
    channel, action = request.match_info["channel"], request.match_info["action"]
    if action == "accept":
        await book.accept(user, channel)
        return redirect(f"/console/admin?changed={channel}#channel-{channel}")
    if action not in ACTIONS:
        raise web.HTTPNotFound()
    form = await request.post()
    body: dict[str, Any] = {"node": form.get("node", "")}
    if action in ("invite", "rights"):
        body["rights"] = [r for r in form.getall("rights", []) if isinstance(r, str)]
        if not body["rights"]:
            raise InvalidInput("tick at least one right; to take every right away, remove the member")
    try:
        spec = MemberChange.model_validate(body)
    except ValidationError as exc:
        raise InvalidInput(f"not a valid membership change: {exc.errors()[0]['msg']}") from exc
    change: dict[str, Any] = {"type": ACTIONS[action], "node": spec.node}
    if spec.rights is not None:
        change["rights"] = spec.rights
    await book.change(user, channel, change)
    return redirect(f"/console/admin?changed={channel}#channel-{channel}")


async def add_person(request: web.Request) -> web.StreamResponse:
    session, form = await posted_form(request)
    user, store = session.user, request.app[SERVICE].store
    user.require("admin")
    name = form.get("name", "").strip()
    if not name or len(name) > 64 or not name.replace("-", "").replace(".", "").replace("_", "").isalnum():
        raise InvalidInput("a user name has letters, digits, dots, dashes or underscores, at most 64")
    try:
        check_strength(form.get("password", ""))  # before the user exists, so no user is left without one
    except WeakPassword as exc:
        raise InvalidInput(str(exc)) from exc
    await add_user(store, name, form.get("role", ""), actor=user.name)  # its API token: `exchange users token`
    await set_password(store, name, form.get("password", ""), actor=user.name)
    return redirect(f"/console/admin#user-{name}")


async def assign_person(request: web.Request) -> web.StreamResponse:
    """Give a contact point a channel, or take it away (as the API's assign_user does)."""
    session, form = await posted_form(request)
    user, service = session.user, request.app[SERVICE]
    user.require("admin")
    name, channel = request.match_info["name"], form.get("channel", "")
    service.channels.state(channel)
    await assign(service.store, name, channel, assigned=form.get("assigned") == "1", actor=user.name)
    return redirect(f"/console/admin#user-{name}")


async def reset_password(request: web.Request) -> web.StreamResponse:
    session, form = await posted_form(request)
    user, store = session.user, request.app[SERVICE].store
    user.require("admin")
    name = request.match_info["name"]
    await set_password(store, name, form.get("password", ""), actor=user.name)
    await end_sessions(store, name, keep=session if name == user.name else None)
    return redirect(f"/console/admin#user-{name}")


async def peers_page(request: web.Request) -> web.StreamResponse:
    """Delivery to each partner: what is queued, delivered, failing (everyone may see it, as in the API)."""
    session = await signed_in(request)
    session.user.require("admin", "auditor", "contact-point")
    service = request.app[SERVICE]
    queued = await service.queued_counts()
    peers = []
    for peer, sender in sorted(request.app[SENDERS].items()):
        status = {**sender.status.as_dict(), "queued": queued.get(peer, 0)}
        peers.append({**status, "roster": service.fed.node(peer)})
    return render(request, "peers.html", session=session, peers=peers)


def routes(prefix: str) -> list[web.RouteDef]:
    return [
        web.get(prefix + "/admin", admin_page),
        web.post(prefix + "/admin/channels/{channel}/{action}", change_membership),
        web.post(prefix + "/admin/users", add_person),
        web.post(prefix + "/admin/users/{name}/channels", assign_person),
        web.post(prefix + "/admin/users/{name}/password", reset_password),
        web.get(prefix + "/peers", peers_page),
    ]
