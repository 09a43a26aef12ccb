"""`exchange webhooks`: URLs each new bulletin's metadata is POSTed to, through the node's API
(administrators; docs/operations.md, "Webhooks")."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

import click
from rich.table import Table

from exchange.cli.client import Target, call
from exchange.cli.options import as_json, emit, node_file, run_async, token_opt
from exchange.cli.output import cell, console, user_errors

admin_opt = click.option("--user", default="admin", show_default=True, help="Local user whose token file to use.")


@click.group()
def webhooks() -> None:
    """Webhooks: new bulletins' metadata POSTed, signed, to your own systems."""


@webhooks.command("add")
@node_file
@admin_opt
@token_opt
@click.argument("channel")
@click.argument("url")
@as_json
@user_errors
def webhooks_add(node_path: Path, user: str, token: str | None, channel: str, url: str, as_json: bool) -> None:
    """Register URL for CHANNEL; prints the signing secret once."""
    path = f"/api/v1/channels/{quote(channel, safe='')}/webhooks"
    result = run_async(call(Target.from_node(node_path, user, token), "POST", path, {"url": url}))

    def render(data: Any) -> None:
        hook = data["webhook"]
        click.echo(f"webhook {hook['id']}: {hook['channel']} -> {hook['url']} (from cursor {hook['cursor']})")
        click.echo(f"secret (shown once; the receiver checks Exchange-Signature with it): {data['secret']}")

    emit(result, as_json, render)


@webhooks.command("list")
@node_file
@admin_opt
@token_opt
@as_json
@user_errors
def webhooks_list(node_path: Path, user: str, token: str | None, as_json: bool) -> None:
    """The node's webhooks and how their deliveries stand."""
    result = run_async(call(Target.from_node(node_path, user, token), "GET", "/api/v1/webhooks"))

    def render(data: Any) -> None:
        table = Table("id", "channel", "url", "delivered", "cursor", "failures", "last error")
        for w in data:
            fields = ("id", "channel", "url", "delivered", "cursor", "failures")
            # A receiver's answer; or why the node announces nothing now (it no longer reads the channel)
            table.add_row(*(cell(w[k]) for k in fields), cell(w.get("paused") or w["last_error"] or ""))
        console.print(table)

    emit(result, as_json, render)


@webhooks.command("remove")
@node_file
@admin_opt
@token_opt
@click.argument("webhook_id", type=click.IntRange(min=1))
@user_errors
def webhooks_remove(node_path: Path, user: str, token: str | None, webhook_id: int) -> None:
    """Remove a webhook: its receiver gets nothing more."""
    run_async(call(Target.from_node(node_path, user, token), "DELETE", f"/api/v1/webhooks/{webhook_id}"))
    click.echo(f"webhook {webhook_id} removed")
