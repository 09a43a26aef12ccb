"""`exchange db`: the node's database schema: which revision it is at, and the upgrade to this release's.

Run with the node stopped, after a backup (docs/operations.md, "Upgrading a node").
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from exchange.cli.options import node_file
from exchange.cli.output import user_errors
from exchange.config import NodeConfig


@click.group()
def db() -> None:
    """The node's database: its schema revision, and the upgrade after installing a new release."""


@db.command("upgrade")
@node_file
@user_errors
def db_upgrade(node_path: Path) -> None:
    """Bring the node's database to this release's schema (stop the node and back it up first).

    A database of release 0.1.0 (no version table) is checked and adopted as revision 0001 first;
    a database already at this release's schema is left unchanged. Either it all happens, or nothing.
    """
    # Imported here, not at the top: the composition root loads the server, the console and the
    # database, which commands that only talk to a node or check a file never need.
    from exchange.app import upgrade_node

    for line in asyncio.run(upgrade_node(NodeConfig.load(node_path))):
        click.echo(line)


@db.command("current")
@node_file
@user_errors
def db_current(node_path: Path) -> None:
    """Show the schema revision of the node's database, and whether this release needs an upgrade."""
    from exchange.app import node_schema

    click.echo(asyncio.run(node_schema(NodeConfig.load(node_path))))
