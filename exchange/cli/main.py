"""Entry point of the `exchange` command: keys, federation, node, users, post, inbox, read, peers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from exchange.cli.audit import audit
from exchange.cli.client import Target, call
from exchange.cli.output import console, user_errors
from exchange.config import FederationConfig, NodeConfig
from exchange.crypto import b64e
from exchange.crypto.passwords import new_password
from exchange.keystore import NodeKeyFiles
from exchange.logs import configure as configure_logs
from exchange.model import BULLETIN_KINDS
from exchange.node.app import RunningNode, start_node
from exchange.node.users import ROLES, add_user, list_users, rotate_token, set_password
from exchange.provision import init_federation
from exchange.store import Store


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


def emit(data: Any, as_json: bool, render: Callable[[Any], None]) -> None:
    if as_json:
        click.echo(json.dumps(data, indent=2))
    else:
        render(data)


node_file = click.option(
    "--node",
    "node_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    required=True,
    help="The node's file, e.g. nodes/nl-customs.toml.",
)
as_json = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
user_opt = click.option("--user", default="officer", show_default=True, help="Local user whose token file to use.")
token_opt = click.option(
    "--token", envvar="EXCHANGE_TOKEN", default=None, help="API token (else the user's token file)."
)


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def cli(verbose: bool) -> None:
    """exchange: signed, end-to-end encrypted bulletins between customs and aviation-security nodes."""
    configure_logs(verbose)


# -- keys -----------------------------------------------------------------------------------


@cli.group()
def keys() -> None:
    """Node key material."""


@keys.command("generate")
@click.argument("node_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--force", is_flag=True, help="Replace existing keys.")
@user_errors
def keys_generate(node_path: Path, force: bool) -> None:
    """Create a node's signing, HPKE and TLS keys under keys/<node>/ (private files 0600)."""
    cfg = NodeConfig.load(node_path)
    keys_ = NodeKeyFiles(cfg.keys_dir).generate(cfg.id, force=force)
    click.echo(f"{cfg.id}: signing {keys_.signing.kid}, encryption {keys_.decryption.kid}, in {cfg.keys_dir}")


# -- federation -----------------------------------------------------------------------------


@cli.group()
def federation() -> None:
    """The sample federation: provision it, run it."""


@federation.command("init")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@user_errors
def federation_init(folder: Path) -> None:
    """Create the authority key, node keys, signed roster, channels and sample users; idempotent."""
    report = run_async(init_federation(folder, sample_passwords=True))
    if not report.created:
        click.echo("federation already initialised; nothing to do")
    for line in report.created:
        click.echo(f"created {line}")


async def _serve(configs: list[NodeConfig]) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    running: list[RunningNode] = []
    try:
        for cfg in configs:
            running.append(await start_node(cfg))
            click.echo(f"{cfg.id:<12} {cfg.endpoint}  ({cfg.name})")
        click.echo("ready; Ctrl-C to stop", err=True)
        await stop.wait()
    finally:
        for node in reversed(running):
            with contextlib.suppress(Exception):
                await node.stop()
        click.echo("stopped", err=True)


@federation.command("up")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@user_errors
def federation_up(folder: Path) -> None:
    """Run every node of the federation in this process (initialising it first if needed)."""
    run_async(init_federation(folder, sample_passwords=True))
    fed = FederationConfig.load(folder)
    run_async(_serve([NodeConfig.load(p) for p in fed.nodes]))


@cli.group()
def node() -> None:
    """One node."""


@node.command("run")
@click.argument("node_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@user_errors
def node_run(node_path: Path) -> None:
    """Run one node until Ctrl-C or SIGTERM."""
    run_async(_serve([NodeConfig.load(node_path)]))


# -- users ----------------------------------------------------------------------------------


@cli.group()
def users() -> None:
    """Local users and their API tokens (run on the node's machine)."""


async def _with_store(cfg: NodeConfig, fn: Callable[[Store], Coroutine[Any, Any, Any]]) -> Any:
    store = await Store.open(cfg.database_url)
    try:
        return await fn(store)
    finally:
        await store.close()


@users.command("add")
@node_file
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@user_errors
def users_add(node_path: Path, name: str, role: str) -> None:
    """Create a user and print its token once."""
    cfg = NodeConfig.load(node_path)
    token = run_async(_with_store(cfg, lambda s: add_user(s, name, role)))
    click.echo(token)


@users.command("token")
@node_file
@click.argument("name")
@user_errors
def users_token(node_path: Path, name: str) -> None:
    """Replace a user's token and print the new one."""
    cfg = NodeConfig.load(node_path)
    click.echo(run_async(_with_store(cfg, lambda s: rotate_token(s, name))))


@users.command("password")
@node_file
@click.argument("name")
@click.option("--generate", is_flag=True, help="Make up a random password and print it once.")
@user_errors
def users_password(node_path: Path, name: str, generate: bool) -> None:
    """Set a user's web console password (asked twice, or --generate); only its argon2 hash is kept."""
    cfg = NodeConfig.load(node_path)
    password = new_password() if generate else click.prompt("New password", hide_input=True, confirmation_prompt=True)
    run_async(_with_store(cfg, lambda s: set_password(s, name, password, actor="cli")))
    if generate:
        click.echo(password)


@users.command("list")
@node_file
@as_json
@user_errors
def users_list(node_path: Path, as_json: bool) -> None:
    """List local users and their roles."""
    cfg = NodeConfig.load(node_path)
    found = run_async(_with_store(cfg, list_users))

    def render(data: Any) -> None:
        for u in data:
            click.echo(f"{u['name']}\t{u['role']}")

    emit([{"name": u.name, "role": u.role} for u in found], as_json, render)


# -- channels -------------------------------------------------------------------------------


@cli.group()
def channels() -> None:
    """Channels (closed user groups): create, invite, accept, set rights, remove, list, show."""


admin_opt = click.option("--user", default="admin", show_default=True, help="Local user whose token file to use.")
rights_opt = click.option(
    "--rights", required=True, help="Comma-separated: read, post, admin.", callback=lambda c, p, v: v.split(",")
)


def _render_channel(c: Any) -> None:
    state = "closed" if c["closed"] else f"open{' until ' + c['ends'] if c['ends'] else ''}"
    console.print(f"[bold]{c['id']}[/bold]  {c['title']}  (owner {c['owner']}, log position {c['pos']}, {state})")
    console.print(f"  agencies: {', '.join(c['agencies'])}; default TLP:{c['default_handling']['tlp']}")
    for node, rights in c["members"].items():
        console.print(f"  member  {node:<14} {', '.join(rights)}")
    for node, rights in c["invited"].items():
        console.print(f"  invited {node:<14} {', '.join(rights)}")


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
            table.add_row(c["id"], c["title"], c["owner"], ", ".join(c["members"]), str(c["pos"]))
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
    """Let a local contact point work in a channel (or stop them)."""
    body = {"user": contact_point, "assigned": not remove}
    run_async(call(Target.from_node(node_path, user, token), "POST", f"/api/v1/channels/{channel}/users", body))
    click.echo(f"{contact_point} {'removed from' if remove else 'assigned to'} {channel}")


@cli.command()
@node_file
@user_opt
@token_opt
@click.argument("bulletin_id")
@click.option("--channel", required=True, help="The channel to re-post it to.")
@as_json
@user_errors
def forward(node_path: Path, user: str, token: str | None, bulletin_id: str, channel: str, as_json: bool) -> None:
    """Re-post a bulletin to another channel (refused for TLP:RED, AMBER+STRICT, no-onward-sharing)."""
    result = run_async(
        call(
            Target.from_node(node_path, user, token),
            "POST",
            f"/api/v1/bulletins/{bulletin_id}/forward",
            {"channel": channel},
        )
    )
    emit(result, as_json, lambda r: click.echo(f"forwarded as {r['id']} to {channel}"))


# -- contact point commands -----------------------------------------------------------------


@cli.command()
@node_file
@user_opt
@token_opt
@click.option("--channel", required=True)
@click.option("--kind", type=click.Choice(BULLETIN_KINDS), default="alert", show_default=True)
@click.option(
    "--tlp",
    type=click.Choice(["CLEAR", "GREEN", "AMBER", "AMBER+STRICT", "RED"]),
    default=None,
    help="Default: the channel's default handling.",
)
@click.option("--no-onward-sharing", is_flag=True)
@click.option("--title", required=True)
@click.option("--body", default="", help="Text, or @file to read it from a file.")
@click.option("--awb", multiple=True, help="Air waybill number, e.g. 176-12345675.")
@click.option("--hs", multiple=True, help="HS code.")
@click.option("--airport", multiple=True, help="IATA airport code.")
@click.option("--flight", multiple=True, help="Flight number.")
@click.option("--company", multiple=True)
@click.option("--ref", multiple=True, help="Id of a bulletin this one refers to.")
@click.option(
    "--attach",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A file to send with it.",
)
@click.option("--language", default="en", show_default=True)
@click.option("--expires", default=None, help="YYYY-MM-DD")
@as_json
@user_errors
def post(
    node_path: Path,
    user: str,
    token: str | None,
    channel: str,
    kind: str,
    tlp: str | None,
    no_onward_sharing: bool,
    title: str,
    body: str,
    awb: tuple[str, ...],
    hs: tuple[str, ...],
    airport: tuple[str, ...],
    flight: tuple[str, ...],
    company: tuple[str, ...],
    ref: tuple[str, ...],
    attach: tuple[Path, ...],
    language: str,
    expires: str | None,
    as_json: bool,
) -> None:
    """Post a bulletin to a channel."""
    if body.startswith("@"):
        body = Path(body[1:]).read_text()
    bulletin: dict[str, Any] = {
        "kind": kind,
        "title": title,
        "body": body,
        "language": language,
        "expires": expires,
        "references": list(ref),
        "attachments": [
            {
                "name": p.name,
                "media_type": mimetypes.guess_type(p.name)[0] or "application/octet-stream",
                "data": b64e(p.read_bytes()),
            }
            for p in attach
        ],
        "indicators": {
            "air_waybills": list(awb),
            "hs_codes": list(hs),
            "airports": list(airport),
            "flights": list(flight),
            "companies": list(company),
        },
    }
    if tlp is not None:
        bulletin["handling"] = {"tlp": tlp, "no_onward_sharing": no_onward_sharing}
    target = Target.from_node(node_path, user, token)
    result = run_async(call(target, "POST", f"/api/v1/channels/{channel}/bulletins", bulletin))
    emit(
        result,
        as_json,
        lambda r: click.echo(f"posted {r['id']} (seq {r['seq']}) to {', '.join(r['recipients']) or 'no one else'}"),
    )


@cli.command()
@node_file
@user_opt
@token_opt
@click.option("--channel", default=None)
@click.option("--after", default=0, type=int, help="Cursor from a previous page.")
@click.option("--limit", default=50, type=int)
@as_json
@user_errors
def inbox(
    node_path: Path, user: str, token: str | None, channel: str | None, after: int, limit: int, as_json: bool
) -> None:
    """List bulletins this node holds."""
    query = f"?after={after}&limit={limit}" + (f"&channel={channel}" if channel else "")
    result = run_async(call(Target.from_node(node_path, user, token), "GET", "/api/v1/bulletins" + query))

    def render(data: Any) -> None:
        table = Table("id", "channel", "from", "kind", "TLP", "title", "created")
        for item in data["items"]:
            table.add_row(
                item["id"][:16],
                item["channel"],
                item["author"],
                item["kind"],
                item["tlp"],
                item["title"],
                item["created"],
            )
        console.print(table)

    emit(result, as_json, render)


@cli.command()
@node_file
@user_opt
@token_opt
@click.argument("bulletin_id")
@as_json
@user_errors
def read(node_path: Path, user: str, token: str | None, bulletin_id: str, as_json: bool) -> None:
    """Show one bulletin (the open is audited and receipted)."""
    result = run_async(call(Target.from_node(node_path, user, token), "GET", f"/api/v1/bulletins/{bulletin_id}"))

    def render(r: Any) -> None:
        b = r["bulletin"]
        console.print(
            f"[bold]TLP:{b['handling']['tlp']}[/bold]  {b['kind']}  "
            f"from {r['author_name']} ({r['author']}), signature verified"
        )
        console.print(f"[bold]{b['title']}[/bold]", highlight=False)
        console.print(b["body"], highlight=False)
        for key, values in b["indicators"].items():
            if values:
                console.print(f"  {key}: {', '.join(values)}", highlight=False)
        for rc in r["receipts"]:
            console.print(f"  receipt: {rc['node']} {rc['status']} at {rc['at']}")

    emit(result, as_json, render)


@cli.command()
@node_file
@user_opt
@token_opt
@as_json
@user_errors
def peers(node_path: Path, user: str, token: str | None, as_json: bool) -> None:
    """Sync status per partner node."""
    result = run_async(call(Target.from_node(node_path, user, token), "GET", "/api/v1/peers"))

    def render(data: Any) -> None:
        table = Table("peer", "queued", "in flight", "delivered", "last success", "last error", "backoff until")
        for p in data:
            table.add_row(
                p["peer"],
                str(p["queued"]),
                str(p["in_flight"]),
                str(p["delivered"]),
                p["last_success"] or "-",
                p["last_error"] or "-",
                p["backoff_until"] or "-",
            )
        console.print(table)

    emit(result, as_json, render)


cli.add_command(audit)


def main() -> None:
    cli()
