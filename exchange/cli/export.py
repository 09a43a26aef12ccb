"""`exchange export --stix`: a STIX 2.1 bundle of a channel, or of one bulletin, for platforms that
import files. The node builds it (`GET /api/v1/channels/{channel}/stix`) under the TAXII policy
(docs/stix.md: no TLP:RED or no-onward-sharing bulletin, AMBER+STRICT only where the channel's owner
allows it) and audits it as a `taxii.read` of resource `export`."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

import click

from exchange.cli.client import Target, call
from exchange.cli.options import node_file, run_async, token_opt, user_opt
from exchange.cli.output import user_errors
from exchange.errors import InvalidInput


@click.command("export")
@click.option("--stix", is_flag=True, required=True, help="A STIX 2.1 bundle (the only format).")
@click.option("--channel", required=True, help="The channel to export (all of it, or the one bulletin).")
@click.option("--bulletin", "bid", default=None, help="Only this bulletin (its full id).")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), default=None, help="File to write (else stdout)."
)
@node_file
@user_opt
@token_opt
@user_errors
def export(
    stix: bool, channel: str, bid: str | None, out: Path | None, node_path: Path, user: str, token: str | None
) -> None:
    """Export a channel, or one bulletin of it, as a STIX 2.1 bundle, under the TAXII policy."""
    if bid is not None and (len(bid) != 64 or any(c not in "0123456789abcdef" for c in bid)):
        raise InvalidInput("--bulletin takes a full bulletin id (64 hex digits)")
    path = f"/api/v1/channels/{quote(channel, safe='')}/stix" + (f"?bulletin={bid}" if bid else "")
    result = run_async(call(Target.from_node(node_path, user, token), "GET", path))
    text = json.dumps(result, indent=2)
    if out is None:
        click.echo(text)
    else:
        out.write_text(text + "\n")
        click.echo(f"wrote {len(result['objects'])} STIX objects to {out}")
