"""What the `exchange` commands share: options, output and running a coroutine."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import click


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
