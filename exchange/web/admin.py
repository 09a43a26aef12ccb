"""Pages for administrators (channel membership, users) and the partners' sync status.

Membership changes go through `ChannelBook.change` and `ChannelBook.accept` with the signed-in
user, as the API's do: the book checks the role and that this node owns the channel.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from aiohttp import web
from pydantic import ValidationError

from exchange.errors import InvalidInput
from exchange.http.appkeys import SERVICE
from exchange.model import ROLES
from exchange.service.views import MemberChange, channel_view
from exchange.web.i18n import N_
from exchange.web.pages import redirect, render
from exchange.web.session import posted_form, read_form, sessions, set_done, signed_in, spend_done, was_done

RIGHTS = ("read", "post", "admin")
ACTIONS = {"invite": "invite", "rights": "set-rights", "remove": "remove"}


async def admin_page(request: web.Request) -> web.StreamResponse:
    session = await signed_in(request)
    user, service = session.user, request.app[SERVICE]
    user.require("admin")
    people = await sessions(request).people(user)
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
    # Said only after this user's own change (`_changed`): a link naming a channel does not make
    # the page claim a change that nobody made (found by a read-only review).
    changed = request.query.get("changed")
    if changed not in {s.channel for s in states} or not was_done(request, _done(changed)):
        changed = None
    response = render(
        request,
        "admin.html",
        session=session,
        channels=channels,
        people=people,
        channel_ids=[s.channel for s in states],
        roles=ROLES,
        rights=RIGHTS,
        changed=changed,
    )
    if changed is not None:
        spend_done(response)
    return response


def _done(channel: str) -> str:
    return f"channel-changed.{channel}"


def _changed(channel: str) -> web.StreamResponse:
    """The admin page after a change of `channel` that this user made, which it then says."""
    response = redirect(f"/console/admin?changed={quote(channel)}#channel-{quote(channel)}")
    set_done(response, _done(channel))
    return response


async def change_membership(request: web.Request) -> web.StreamResponse:
    """Invite, change rights, remove (as owner), or accept an invitation: ordered and signed by the book."""
    session, _ = await posted_form(request)
    user, book = session.user, request.app[SERVICE].channels
    user.require("admin")
    channel, action = request.match_info["channel"], request.match_info["action"]
    if action == "accept":
        await book.accept(user, channel)
        return _changed(channel)
    if action not in ACTIONS:
        raise web.HTTPNotFound()
    form = await read_form(request)
    body: dict[str, Any] = {"node": form.get("node", "")}
    if action in ("invite", "rights"):
        body["rights"] = [r for r in form.getall("rights", []) if isinstance(r, str)]
        if not body["rights"]:
            raise InvalidInput(N_("tick at least one right; to take every right away, remove the member"))
    try:
        spec = MemberChange.model_validate(body)
    except ValidationError as exc:
        raise InvalidInput(f"not a valid membership change: {exc.errors()[0]['msg']}") from exc
    change: dict[str, Any] = {"type": ACTIONS[action], "node": spec.node}
    if spec.rights is not None:
        change["rights"] = spec.rights
    await book.change(user, channel, change)
    return _changed(channel)


async def add_person(request: web.Request) -> web.StreamResponse:
    session, form = await posted_form(request)
    name = form.get("name", "").strip()
    await sessions(request).add_person(session.user, name, form.get("role", ""), form.get("password", ""))
    return redirect(f"/console/admin#user-{quote(name)}")


async def assign_person(request: web.Request) -> web.StreamResponse:
    """Give a contact point a channel, or take it away (as the API's assign_user does)."""
    session, form = await posted_form(request)
    user, service = session.user, request.app[SERVICE]
    user.require("admin")
    name, channel = request.match_info["name"], form.get("channel", "")
    service.channels.state(channel)
    await service.users.assign(name, channel, assigned=form.get("assigned") == "1", actor=user.name)
    return redirect(f"/console/admin#user-{quote(name)}")


async def reset_password(request: web.Request) -> web.StreamResponse:
    session, form = await posted_form(request)
    name = request.match_info["name"]
    await sessions(request).set_password(session.user, name, form.get("password", ""), keep=session)
    return redirect(f"/console/admin#user-{quote(name)}")


async def disable_person(request: web.Request) -> web.StreamResponse:
    """Lock a user out, or let a disabled one in again (as `exchange users disable` / `enable`)."""
    session, form = await posted_form(request)
    name, disabled = request.match_info["name"], form.get("disabled", "")
    if disabled not in ("0", "1"):
        raise InvalidInput(N_("say whether to disable the user (1) or to enable it (0)"))
    await sessions(request).set_disabled(session.user, name, disabled=disabled == "1")
    return redirect(f"/console/admin#user-{quote(name)}")


async def peers_page(request: web.Request) -> web.StreamResponse:
    """Delivery to each partner: what is queued, delivered, failing (everyone may see it, as in the API)."""
    session = await signed_in(request)
    session.user.require("admin", "auditor", "contact-point")
    service = request.app[SERVICE]
    peers = [{**s.as_dict(), "roster": service.fed.node(s.peer)} for s in await service.peer_statuses()]
    # the roster v2 version held, its expiry and a fork found at it (None: the node runs on its v1 roster)
    roster, fork = service.roster.status(), service.roster.fork()
    return render(request, "peers.html", session=session, peers=peers, roster=roster, fork=fork)


def routes(prefix: str) -> list[web.RouteDef]:
    return [
        web.get(prefix + "/admin", admin_page),
        web.post(prefix + "/admin/channels/{channel}/{action}", change_membership),
        web.post(prefix + "/admin/users", add_person),
        web.post(prefix + "/admin/users/{name}/channels", assign_person),
        web.post(prefix + "/admin/users/{name}/password", reset_password),
        web.post(prefix + "/admin/users/{name}/disabled", disable_person),
        web.get(prefix + "/peers", peers_page),
    ]
