"""`exchange export --stix`: a STIX 2.1 bundle of a channel, or of one bulletin, for platforms that
import files. It reads the node's TAXII server (docs/stix.md) as the user, so the same policy
applies (no TLP:RED, AMBER+STRICT or no-onward-sharing bulletin) and the read is audited."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from exchange.cli.client import Target, call
from exchange.cli.options import node_file, run_async, token_opt, user_opt
from exchange.cli.output import user_errors
from exchange.errors import InvalidInput
from exchange.protocol.stix import TLP_EXTENSION, bundle, collection_id, object_uuid

PAGE = 1000


def _collection(node: str, channel: str) -> str:
    return f"/taxii2/exchange/collections/{collection_id(node, channel)}/"


async def channel_objects(target: Target, node: str, channel: str) -> list[dict[str, Any]]:
    """Every servable object of a channel, each id once (the shared objects come with every bulletin)."""
    path = _collection(node, channel) + f"objects/?limit={PAGE}"
    out: dict[str, dict[str, Any]] = {}
    token: str | None = None
    while True:
        env = await call(target, "GET", path + (f"&next={quote(token)}" if token else ""))
        for obj in env.get("objects", []):
            out.setdefault(obj["id"], obj)
        token = env.get("next") if env.get("more") else None
        if token is None:
            return list(out.values())


async def bulletin_objects(target: Target, node: str, channel: str, bid: str) -> list[dict[str, Any]]:
    """The objects of one bulletin: its report, what it refers to and is marked with, and the
    extension definitions they use (but OASIS's TLP 2.0 one, which the node does not serve)."""
    base = _collection(node, channel) + "objects/"
    out: dict[str, dict[str, Any]] = {}
    wanted = [f"report--{object_uuid(bid, 'report')}"]
    while wanted:
        oid = wanted.pop(0)
        if oid in out:
            continue
        (obj,) = (await call(target, "GET", f"{base}{oid}/"))["objects"]
        out[oid] = obj
        refs = obj.get("object_refs", []) if obj["type"] == "report" else []
        wanted += [*refs, obj.get("created_by_ref"), *obj.get("object_marking_refs", [])]
        wanted += [
            e for e in obj.get("extensions", {}) if e.startswith("extension-definition--") and e != TLP_EXTENSION
        ]
        wanted = [w for w in wanted if w]
    return list(out.values())


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
    from exchange.config import NodeConfig

    if bid is not None and (len(bid) != 64 or any(c not in "0123456789abcdef" for c in bid)):
        raise InvalidInput("--bulletin takes a full bulletin id (64 hex digits)")
    target = Target.from_node(node_path, user, token)
    me = NodeConfig.load(node_path).id
    if bid is None:
        objects = run_async(channel_objects(target, me, channel))
    else:
        objects = run_async(bulletin_objects(target, me, channel, bid))
    text = json.dumps(bundle(objects, f"{me}:{channel}:{bid or 'all'}"), indent=2)
    if out is None:
        click.echo(text)
    else:
        out.write_text(text + "\n")
        click.echo(f"wrote {len(objects)} STIX objects to {out}")
