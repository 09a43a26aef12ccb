"""`exchange node rotate` on a node's own host, and the files the authority's `roster propose`
takes from it (docs/operations.md, "Rotating a node's keys"; docs/protocol.md, 6a.13).

A thin adapter: the request's rules are exchange.protocol.rotation's, the held roster version is
read through the composition root, the keys folder through exchange.keystore.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from exchange.cli.options import node_file, run_async
from exchange.cli.output import user_errors
from exchange.clock import timestamp
from exchange.config import NodeConfig
from exchange.crypto import DecryptionKey, SigningKey, b64e
from exchange.errors import ConfigError, InvalidInput, NotFound
from exchange.keystore import NodeKeyFiles, write_private
from exchange.protocol.roster2_model import RosterV2
from exchange.protocol.rotation import (
    ROTATION_USES,
    RotationRequest,
    parse_rotation_request,
    rotation_hash,
    sign_rotation_request,
    verify_rotation_request,
)


@click.command("rotate")
@node_file
@click.option("--use", "use", required=True, type=click.Choice(ROTATION_USES), help="Which key to replace.")
@click.option(
    "--out", type=click.Path(dir_okay=False, path_type=Path), help="Request file (default: in the keys folder)."
)
@user_errors
def node_rotate(node_path: Path, use: str, out: Path | None) -> None:
    """Make a new signing, encryption or TLS key in this node's keys folder (private, 0600, it
    never leaves this host; for TLS with its certificate) and a rotation request signed by the
    node's current signing key (and, for a signing key, by the new one) for the federation
    authority; print the fingerprints to compare. The node keeps its keys until it runs on a
    roster version that lists the new one."""
    from exchange.app import local_roster  # the composition root opens the database

    config = NodeConfig.load(node_path)

    async def held() -> RosterV2 | None:
        async with local_roster(config) as roster:
            return roster.held.roster if roster.held is not None else None

    doc = run_async(held())
    if doc is None:
        raise NotFound(f"{config.id} holds no roster v2 version: import one first (exchange roster import)")
    node = next((n for n in doc.nodes if n.id == config.id), None)
    if node is None or node.status != "active":
        raise InvalidInput(f"{config.id} is not an active node of roster version {doc.version}")
    current = {k.use: k.kid for k in node.keys if k.state == "active"}
    files = NodeKeyFiles(config.keys_dir)
    keys = files.load(current["signing"], current["encryption"])
    if use == "tls":
        kid, tls_key, cert = files.new_tls(config.id)
        request = sign_rotation_request(doc.federation, config.id, timestamp(), keys.signing, cert, old=current[use])
        verify_rotation_request(request, doc)  # what the proposer checks: refused here first

        def save() -> Path:
            return files.write_tls(kid, tls_key, cert)

    else:
        new: SigningKey | DecryptionKey = SigningKey.generate() if use == "signing" else DecryptionKey.generate()
        public = new if isinstance(new, SigningKey) else new.public
        request = sign_rotation_request(doc.federation, config.id, timestamp(), keys.signing, public, old=current[use])
        verify_rotation_request(request, doc)
        kid = new.kid

        def save() -> Path:
            where = files.rotated(use, new.kid)
            write_private(where, b64e(new.private_bytes()).encode() + b"\n")
            return where

    # The request first, then the key: a request that cannot be written (the file exists, its
    # folder does not) left a new private key behind that no request named, at every try (found by
    # a read-only review); a key that cannot be written takes its request away again.
    path = out or config.keys_dir / f"rotate-{use}-{kid}.json"
    try:
        with path.open("x") as fh:
            fh.write(json.dumps(request.model_dump(mode="json"), indent=2) + "\n")
    except FileExistsError as exc:
        raise ConfigError(f"{path} exists") from exc
    try:
        where = save()
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    click.echo(f"{config.id}: new {use} key {kid} in {where} (replaces {current[use]})")
    click.echo(f"wrote {path}: send it to the federation authority (exchange roster propose --rotate)")
    click.echo(f"  request hash {rotation_hash(request)}  (read it to them out of band)")


def read_rotation(path: Path) -> RotationRequest:
    """A rotation request file, for `roster propose --rotate`; its hash is printed to compare."""
    try:
        request = parse_rotation_request(path.read_bytes())
    except InvalidInput as exc:
        raise InvalidInput(f"{path}: {exc.detail}") from exc
    body: Any = request.request
    click.echo(
        f"rotation request of {body.id} ({body.use} {body.old} -> {body.key.kid}): hash {rotation_hash(request)}"
    )
    return request
