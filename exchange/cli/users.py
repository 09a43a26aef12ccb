"""`exchange users`: the node's local users, their API tokens and console passwords."""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from exchange.cli.options import as_json, emit, node_file, run_async
from exchange.cli.output import user_errors
from exchange.config import NodeConfig
from exchange.crypto.passwords import new_password
from exchange.model import ROLES

if TYPE_CHECKING:
    from exchange.service.users import Users


@click.group()
def users() -> None:
    """Local users, their API tokens and console passwords (run on the node's machine).

    When an officer leaves: `exchange users disable --node FILE NAME` (docs/operations.md).
    """


async def _with_users(cfg: NodeConfig, fn: Callable[[Users], Coroutine[Any, Any, Any]]) -> Any:
    # Imported here, not at the top: the composition root loads the server, the console and the
    # database, which commands that only talk to a node or check a file never need.
    from exchange.app import local_users

    async with local_users(cfg) as found:
        return await fn(found)


@users.command("add")
@node_file
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@user_errors
def users_add(node_path: Path, name: str, role: str) -> None:
    """Create a user and print its token once."""
    cfg = NodeConfig.load(node_path)
    token = run_async(_with_users(cfg, lambda u: u.add(name, role, actor="cli")))
    click.echo(token)


@users.command("token")
@node_file
@click.argument("name")
@user_errors
def users_token(node_path: Path, name: str) -> None:
    """Replace a user's token and print the new one."""
    cfg = NodeConfig.load(node_path)
    click.echo(run_async(_with_users(cfg, lambda u: u.rotate_token(name, actor="cli"))))


@users.command("password")
@node_file
@click.argument("name")
@click.option("--generate", is_flag=True, help="Make up a random password and print it once.")
@user_errors
def users_password(node_path: Path, name: str, generate: bool) -> None:
    """Set a user's web console password (asked twice, or --generate); only its argon2 hash is kept."""
    cfg = NodeConfig.load(node_path)
    password = new_password() if generate else click.prompt("New password", hide_input=True, confirmation_prompt=True)
    run_async(_with_users(cfg, lambda u: u.set_password(name, password, actor="cli")))
    if generate:
        click.echo(password)


@users.command("disable")
@node_file
@click.argument("name")
@user_errors
def users_disable(node_path: Path, name: str) -> None:
    """Lock a user out at once, as when an officer leaves.

    Its API token and console password stop working and its console sessions end, on every
    worker of the node; its followers and live inboxes stop at their next check. Refused for
    the node's last enabled admin. Audited (user.disabled). `users enable` lets it in again.
    """
    cfg = NodeConfig.load(node_path)
    run_async(_with_users(cfg, lambda u: u.disable(name, actor="cli")))


@users.command("enable")
@node_file
@click.argument("name")
@user_errors
def users_enable(node_path: Path, name: str) -> None:
    """Let a disabled user in again, with a new token, printed once.

    The old token stays refused, and the user has no console password until one is set with
    `exchange users password`. Audited (user.enabled).
    """
    cfg = NodeConfig.load(node_path)
    click.echo(run_async(_with_users(cfg, lambda u: u.enable(name, actor="cli"))))
    hint = f"exchange users password --node {node_path} {name}"
    click.echo(f"note: {name} has no console password until one is set: {hint}", err=True)


@users.command("list")
@node_file
@as_json
@user_errors
def users_list(node_path: Path, as_json: bool) -> None:
    """List local users, their roles, and since when a disabled one is disabled."""
    cfg = NodeConfig.load(node_path)
    found = run_async(_with_users(cfg, lambda u: u.list()))

    def render(data: Any) -> None:
        for u in data:
            disabled = f"\tdisabled since {u['disabled_at']}" if u["disabled_at"] else ""
            click.echo(f"{u['name']}\t{u['role']}{disabled}")

    emit([{"name": u.name, "role": u.role, "disabled_at": u.disabled_at} for u in found], as_json, render)


# -- channels -------------------------------------------------------------------------------
