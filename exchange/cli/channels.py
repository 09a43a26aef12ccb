"""`exchange channels`: list, show, create channels and change their membership, through the node's API."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from exchange.cli.client import Target, call
from exchange.cli.options import as_json, emit, node_file, run_async, token_opt, user_opt
from exchange.cli.output import cell, console, literal, user_errors


@click.group()
def channels() -> None:
    """Channels (closed user groups): create, invite, accept, set rights, remove, list, show."""


admin_opt = click.option("--user", default="admin", show_default=True, help="Local user whose token file to use.")
rights_opt = click.option(
    "--rights", required=True, help="Comma-separated: read, post, admin.", callback=lambda c, p, v: v.split(",")
)


def _render_channel(c: Any) -> None:
    state = "closed" if c["closed"] else f"open{' until ' + c['ends'] if c['ends'] else ''}"
    # The owner wrote the channel (a partner, for most): shown literally (exchange.cli.output).
    title, owner, state = literal(c["title"]), literal(c["owner"]), literal(state)
    console.print(f"[bold]{literal(c['id'])}[/bold]  {title}  (owner {owner}, log position {c['pos']}, {state})")
    agencies, tlp = literal(", ".join(c["agencies"])), literal(c["default_handling"]["tlp"])
    console.print(f"  agencies: {agencies}; default TLP:{tlp}")
    for node, rights in c["members"].items():
        console.print(f"  member  {literal(node):<14} {literal(', '.join(rights))}")
    for node, rights in c["invited"].items():
        console.print(f"  invited {literal(node):<14} {literal(', '.join(rights))}")
    allowed = "allowed" if c.get("export_amber_strict") else "withheld"
    console.print(f"  TLP:AMBER+STRICT by TAXII or STIX export: {allowed} (RED and no-onward-sharing: never)")


def _channel_call(
    node_path: Path, user: str, token: str | None, method: str, path: str, body: Any, as_json: bool
) -> None:
    result = run_async(call(Target.from_node(node_path, user, token), method, path, body))
    emit(result, as_json, _render_channel)


@channels.command("list")
@node_file
@user_opt
@token_opt
@as_json
@user_errors
def channels_list(node_path: Path, user: str, token: str | None, as_json: bool) -> None:
    """Channels this node takes part in (a contact point sees only theirs)."""
    result = run_async(call(Target.from_node(node_path, user, token), "GET", "/api/v1/channels"))

    def render(data: Any) -> None:
        table = Table("channel", "title", "owner", "members", "log")
        for c in data:
            table.add_row(*map(cell, (c["id"], c["title"], c["owner"], ", ".join(c["members"]), c["pos"])))
        console.print(table)

    emit(result, as_json, render)


@channels.command("show")
@node_file
@user_opt
@token_opt
@click.argument("channel")
@as_json
@user_errors
def channels_show(node_path: Path, user: str, token: str | None, channel: str, as_json: bool) -> None:
    """One channel: members, rights, invitations, policy."""
    _channel_call(node_path, user, token, "GET", f"/api/v1/channels/{channel}", None, as_json)


@channels.command("create")
@node_file
@admin_opt
@token_opt
@click.argument("channel")
@click.option("--title", required=True)
@click.option("--purpose", default="")
@click.option("--agencies", required=True, help="Comma-separated agency kinds allowed, e.g. customs,aviation-security.")
@click.option("--tlp", default="AMBER", show_default=True)
@click.option("--ends", default=None, help="YYYY-MM-DD, for operation-scoped channels.")
@as_json
@user_errors
def channels_create(
    node_path: Path,
    user: str,
    token: str | None,
    channel: str,
    title: str,
    purpose: str,
    agencies: str,
    tlp: str,
    ends: str | None,
    as_json: bool,
) -> None:
    """Create a channel owned by this node."""
    body = {
        "id": channel,
        "title": title,
        "purpose": purpose,
        "policy": {"agencies": agencies.split(",")},
        "default_handling": {"tlp": tlp, "no_onward_sharing": False},
        "ends": ends,
    }
    _channel_call(node_path, user, token, "POST", "/api/v1/channels", body, as_json)


# (action, help, takes a member, takes rights): each posts to /api/v1/channels/<channel>/<action>.
MEMBERSHIP = [
    ("invite", "Invite a node (run at the owner node).", True, True),
    ("accept", "Accept an invitation (run at the invited node).", False, False),
    ("rights", "Change a member's rights (run at the owner node).", True, True),
    ("remove", "Remove a member or withdraw an invitation (run at the owner node).", True, False),
    ("grant-history", "Record an explicit, audited grant of earlier bulletins to a member (owner node).", True, False),
    ("close", "Close a channel for good (run at the owner node).", False, False),
]


def _membership_command(action: str, help_: str, takes_member: bool, takes_rights: bool) -> None:
    def command(
        node_path: Path,
        user: str,
        token: str | None,
        channel: str,
        as_json: bool,
        member: str | None = None,
        rights: list[str] | None = None,
    ) -> None:
        body: dict[str, Any] = {"node": member} if member else {}
        if rights:
            body["rights"] = rights
        _channel_call(node_path, user, token, "POST", f"/api/v1/channels/{channel}/{action}", body, as_json)

    fn: Callable[..., Any] = as_json(user_errors(command))
    if takes_rights:
        fn = rights_opt(fn)
    if takes_member:
        fn = click.argument("member")(fn)
    fn = node_file(admin_opt(token_opt(click.argument("channel")(fn))))
    channels.command(action, help=help_)(fn)


for _spec in MEMBERSHIP:
    _membership_command(*_spec)


@channels.command("export")
@node_file
@admin_opt
@token_opt
@click.argument("channel")
@click.option(
    "--amber-strict/--no-amber-strict",
    required=True,
    help="Allow (or stop) TLP:AMBER+STRICT bulletins leaving members' nodes by TAXII or STIX export.",
)
@as_json
@user_errors
def channels_export(
    node_path: Path, user: str, token: str | None, channel: str, amber_strict: bool, as_json: bool
) -> None:
    """Set the channel's export rule, signed into its log (run at the owner node)."""
    body = {"amber_strict": amber_strict}
    _channel_call(node_path, user, token, "POST", f"/api/v1/channels/{channel}/export", body, as_json)


@channels.command("assign")
@node_file
@admin_opt
@token_opt
@click.argument("channel")
@click.argument("contact_point")
@click.option("--remove", is_flag=True, help="Take the channel away instead.")
@user_errors
def channels_assign(
    node_path: Path, user: str, token: str | None, channel: str, contact_point: str, remove: bool
) -> None:
    """Let a local contact point work in a channel, or a feed take it by TAXII (or stop them)."""
    body = {"user": contact_point, "assigned": not remove}
    run_async(call(Target.from_node(node_path, user, token), "POST", f"/api/v1/channels/{channel}/users", body))
    click.echo(f"{contact_point} {'removed from' if remove else 'assigned to'} {channel}")
