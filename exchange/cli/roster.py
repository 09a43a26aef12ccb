"""The roster ceremony (docs/operations.md, "Joining and the roster ceremony"): `exchange node init`
on a new administration's own host, `exchange roster propose`, `sign` and `combine` on the
authority's side, `exchange roster import` and `status` at a node, and `migrate` for a federation
that runs release 0.1.0's v1 roster.

A thin adapter: files in and out, the rules in exchange.protocol (documents, signatures) and
exchange.service.federation (what a node holds). Every refusal is one `error:` line and exit 1.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from exchange.cli.options import as_json, emit, node_file, run_async
from exchange.cli.output import user_errors
from exchange.cli.rotation import read_rotation
from exchange.clock import timestamp, utc_now
from exchange.config import NodeConfig
from exchange.crypto import SigningKey, VerifyKey, b64d, b64e, strict_loads
from exchange.errors import ConfigError, Conflict, ExchangeError, InvalidInput
from exchange.keystore import NodeKeyFiles, load_authority_public, read_file, write_private, write_public
from exchange.model import AGENCY_KINDS, SignedRoster, first_error
from exchange.protocol.roster2_model import (
    AuthorityKey,
    NodeStatus,
    RosterSignature,
    RosterSignatureFile,
    RosterV2,
    SignedRosterV2,
    parse_timestamp,
    roster_values,
)
from exchange.protocol.rosterchain import (
    TrustedRoster,
    check_threshold,
    combine,
    parse_roster_v2,
    roster_hash,
    sign_roster_v2,
    valid_signers,
)
from exchange.protocol.rostermigration import (
    V1_HOLDER,
    admit,
    authority,
    check_join_details,
    from_v1,
    join_hash,
    parse_join_request,
    sign_join_request,
)
from exchange.protocol.rosterview import roster_view
from exchange.protocol.rotation import rotate

HOLDER_KEY = "authority.key"
HOLDER_PUBLIC = "authority.pub.json"
JOIN_REQUEST = "join-request.json"
days_opt = click.option(
    "--days", default=365, show_default=True, type=click.IntRange(1, 3650), help="Days until the version expires."
)
out_opt = click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="File to write.")


def _write_json(path: Path, value: Any) -> None:
    write_public(path, json.dumps(value, indent=2, ensure_ascii=False).encode("utf-8") + b"\n")


def _model(path: Path, model: type[Any], what: str) -> Any:
    try:
        data = read_file(path)
        return model.model_validate(strict_loads(data, min_values=roster_values(len(data))))
    except ValidationError as exc:
        raise InvalidInput(f"{path} is not {what}: {first_error(exc)}") from exc
    except InvalidInput as exc:
        raise InvalidInput(f"{path} is not {what}: {exc.detail}") from exc


def _signed(path: Path) -> SignedRosterV2:
    try:
        return parse_roster_v2(read_file(path))
    except InvalidInput as exc:
        raise InvalidInput(f"{path}: {exc.detail}") from exc


def _holders(paths: Sequence[Path]) -> list[tuple[str, VerifyKey]]:
    """The public keys that `exchange roster keygen` wrote, each checked against its kid."""
    holders = []
    for path in paths:
        entry: AuthorityKey = _model(path, AuthorityKey, "an authority holder's public key")
        key = VerifyKey(b64d(entry.key))
        if key.kid != entry.kid:
            raise InvalidInput(f"{path}: kid {entry.kid} is not its key's ({key.kid})")
        holders.append((entry.holder, key))
    return holders


def _expires(days: int) -> tuple[str, str]:
    now = utc_now()
    return timestamp(now), timestamp(now + dt.timedelta(days=days))


def _describe(doc: RosterV2) -> list[str]:
    """What a holder should check before signing: the version, its authority, and what it changes."""
    lines = [
        f"roster version {doc.version} of {doc.federation!r}, issued {doc.issued}, expires {doc.expires}",
        f"  previous: {doc.previous or 'none (first version)'}",
        f"  authority: {doc.authority.threshold} of " + ", ".join(f"{k.holder} ({k.kid})" for k in doc.authority.keys),
    ]
    for node in doc.nodes:
        new_keys = [f"{k.use} {k.kid}" for k in node.keys if k.valid_from == doc.version]
        if node.since == doc.version or new_keys:
            change = f"{node.status} since this version" if node.since == doc.version else node.status
            lines.append(
                f"  {node.id}: {change}" + (f"; keys from this version: {', '.join(new_keys)}" if new_keys else "")
            )
    lines.append(f"  hash: {roster_hash(doc)}  (compare it with the proposer's, out of band)")
    return lines


def _proposal(path: Path, doc: RosterV2) -> None:
    _write_json(path, doc.model_dump(mode="json"))
    for line in _describe(doc):
        click.echo(line)
    click.echo(f"wrote {path}: have {doc.authority.threshold} holders sign it (exchange roster sign)")


# -- at the new administration's host -------------------------------------------------------------


@click.command("init")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--federation", "federation_name", required=True, help="The federation's name, as its roster has it.")
@click.option("--id", "node_id", required=True, help="The node id the federation gave, e.g. za-customs.")
@click.option("--name", required=True, help="The administration's name.")
@click.option("--country", required=True, help="ISO 3166 alpha-2 code, e.g. ZA.")
@click.option("--agency", required=True, type=click.Choice(AGENCY_KINDS))
@click.option("--endpoint", required=True, help="https://host:port where partners reach the node.")
@click.option("--force", is_flag=True, help="Replace existing keys.")
@user_errors
def node_init(
    folder: Path,
    federation_name: str,
    node_id: str,
    name: str,
    country: str,
    agency: str,
    endpoint: str,
    force: bool,
) -> None:
    """Make this node's keys in FOLDER (private files 0600, never to leave this host) and a join
    request signed with them for the federation authority; print the fingerprints to compare."""
    details = {
        "federation": federation_name,
        "id": node_id,
        "name": name,
        "country": country,
        "agency": agency,
        "endpoint": endpoint,
    }
    check_join_details(details)  # before any key is written (or, with --force, replaced)
    files = NodeKeyFiles(folder)
    keys = files.generate(node_id, force=force)
    request = sign_join_request(details, timestamp(), keys.signing, keys.decryption.public, read_file(files.tls_cert))
    path = folder / JOIN_REQUEST
    _write_json(path, request.model_dump(mode="json"))
    tls = next(k for k in request.request.keys if k.use == "tls")
    click.echo(f"{node_id}: keys in {folder}")
    click.echo(f"  signing kid     {keys.signing.kid}")
    click.echo(f"  encryption kid  {keys.decryption.kid}")
    click.echo(f"  tls kid         {tls.kid}")
    click.echo(f"wrote {path}: send it to the federation authority")
    click.echo(f"  request hash {join_hash(request)}  (read it to them out of band)")


# -- the authority's side -------------------------------------------------------------------------


@click.group()
def roster() -> None:
    """Roster v2: the authority's offline ceremony, and importing versions at a node."""


@roster.command("keygen")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--holder", required=True, help="Who holds the key, e.g. 'WCO Secretariat'.")
@user_errors
def roster_keygen(folder: Path, holder: str) -> None:
    """Make one authority holder's signing key in FOLDER (kept offline) and its public file."""
    key = SigningKey.generate()
    if (folder / HOLDER_KEY).exists() or (folder / HOLDER_KEY).is_symlink():
        # (write_private's own message names a --force this command does not have)
        raise Conflict(f"{folder / HOLDER_KEY} exists: a holder's key is not replaced here; choose another folder")
    write_private(folder / HOLDER_KEY, b64e(key.private_bytes()).encode() + b"\n")
    _write_json(folder / HOLDER_PUBLIC, {"kid": key.kid, "key": b64e(key.verify_key.raw), "holder": holder})
    click.echo(f"{holder}: authority key {key.kid}; give {folder / HOLDER_PUBLIC} to the proposer")


@roster.command("migrate")
@click.option("--v1-roster", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--v1-authority", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--holder-key", "holder_keys", multiple=True, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--threshold", required=True, type=click.IntRange(1, 16))
@days_opt
@out_opt
@user_errors
def roster_migrate(
    v1_roster: Path, v1_authority: Path, holder_keys: tuple[Path, ...], threshold: int, days: int, out: Path
) -> None:
    """Propose version 1 of roster v2 from a release 0.1.0 federation's v1 roster: the same nodes and
    keys, a k-of-n authority. Its holders sign it, and so does the v1 authority key."""
    signed_v1: SignedRoster = _model(v1_roster, SignedRoster, "a v1 roster")
    doc = from_v1(
        signed_v1, load_authority_public(v1_authority), authority(_holders(holder_keys), threshold), *_expires(days)
    )
    _proposal(out, doc)
    click.echo("  the v1 authority key signs it too: exchange roster sign --key keys/federation/authority.key")


@roster.command("propose")
@click.option("--held", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--join", "joins", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--suspend", multiple=True, help="A node id to suspend.")
@click.option("--activate", multiple=True, help="A suspended node id to make active again.")
@click.option("--revoke", multiple=True, help="A node id to revoke (for good).")
@click.option("--rotate", "rotations", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--finish-rotation", "finish", multiple=True, help="A node id whose retiring keys become verify-only.")
@click.option("--holder-key", "holder_keys", multiple=True, type=click.Path(exists=True, path_type=Path))
@click.option("--threshold", type=click.IntRange(1, 16), help="With --holder-key: a new authority.")
@days_opt
@out_opt
@user_errors
def roster_propose(
    held: Path,
    joins: tuple[Path, ...],
    suspend: tuple[str, ...],
    activate: tuple[str, ...],
    revoke: tuple[str, ...],
    rotations: tuple[Path, ...],
    finish: tuple[str, ...],
    holder_keys: tuple[Path, ...],
    threshold: int | None,
    days: int,
    out: Path,
) -> None:
    """Write the unsigned next version after the HELD signed roster: join requests admitted, nodes
    suspended or revoked, keys rotated (--rotate: a node's request; --finish-rotation: the overlap
    ends), the authority replaced. Print what changes and its hash."""
    current = _signed(held)
    TrustedRoster.restore(current)  # the version proposed from must itself be a good one
    if bool(holder_keys) != (threshold is not None):
        raise InvalidInput("a new authority needs both --holder-key (each holder) and --threshold")
    new_authority = authority(_holders(holder_keys), threshold) if threshold is not None else None
    changes: list[tuple[tuple[str, ...], NodeStatus]] = [
        (suspend, "suspended"),
        (activate, "active"),
        (revoke, "revoked"),
    ]
    statuses = {node: status for ids, status in changes for node in ids}
    requests = []
    for path in joins:
        try:
            request = parse_join_request(read_file(path))
        except InvalidInput as exc:
            raise InvalidInput(f"{path}: {exc.detail}") from exc
        click.echo(f"join request of {request.request.id}: hash {join_hash(request)}  (compare it with theirs)")
        requests.append(request)
    issued, expires = _expires(days)
    if parse_timestamp(current.roster.issued) > parse_timestamp(issued):  # 6a.5 would refuse what follows
        raise InvalidInput(
            f"{held}: version {current.roster.version} is issued at {current.roster.issued}, after this "
            f"host's clock ({issued}): no version issued now can follow it; check this host's clock"
        )
    doc = admit(current.roster, issued, expires, requests, statuses, new_authority)
    if rotations or finish:
        doc = rotate(current.roster, doc, [read_rotation(p) for p in rotations], finish)
    roster_view(doc)  # nodes run on its v1 view: they take no version without one
    _proposal(out, doc)


@roster.command("sign")
@click.argument("proposal", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", "key_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@out_opt
@user_errors
def roster_sign(proposal: Path, key_path: Path, out: Path) -> None:
    """Sign a proposed version with one holder's key (offline); write the signature file."""
    doc: RosterV2 = _model(proposal, RosterV2, "a proposed roster version")
    try:
        key = SigningKey(b64d(read_file(key_path).decode("ascii").strip()))
    except (InvalidInput, UnicodeDecodeError) as exc:
        raise ConfigError(f"unreadable authority key {key_path}") from exc
    for line in _describe(doc):
        click.echo(line)
    sig = sign_roster_v2(doc, key)
    _write_json(
        out,
        RosterSignatureFile(
            v=2,
            federation=doc.federation,
            version=doc.version,
            hash=roster_hash(doc),
            kid=sig.kid,
            signature=sig.signature,
        ).model_dump(mode="json"),
    )
    click.echo(f"signed with {key.kid}: wrote {out}")


@roster.command("combine")
@click.argument("proposal", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("signatures", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--held",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The version before (not for version 1).",
)
@click.option(
    "--v1-authority",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="For a migration: the v1 authority's public key, whose signature it needs too.",
)
@out_opt
@user_errors
def roster_combine(
    proposal: Path, signatures: tuple[Path, ...], held: Path | None, v1_authority: Path | None, out: Path
) -> None:
    """Put the holders' signature files and the proposal together into the signed version, checked
    as a node will check it (but for its expiry); refuse a signature that does not verify."""
    doc: RosterV2 = _model(proposal, RosterV2, "a proposed roster version")
    digest = roster_hash(doc)
    previous = _signed(held) if held is not None else None
    if doc.version > 1 and previous is None:
        raise InvalidInput(f"version {doc.version} is checked against the version before: give --held")
    holders = [(k.holder, VerifyKey(b64d(k.key))) for k in doc.authority.keys]
    if previous is not None:
        holders += [(k.holder, VerifyKey(b64d(k.key))) for k in previous.roster.authority.keys]
    if v1_authority is not None:
        holders.append((V1_HOLDER, load_authority_public(v1_authority)))
    known = authority(list({key.kid: (name, key) for name, key in holders}.values()), 1)
    parts = []
    for path in signatures:
        part: RosterSignatureFile = _model(path, RosterSignatureFile, "a roster signature file")
        if (part.version, part.hash) != (doc.version, digest):
            raise InvalidInput(f"{path} signs version {part.version} with hash {part.hash}, not this proposal")
        sig = RosterSignature(kid=part.kid, signature=part.signature)
        if part.kid not in {k.kid for k in known.keys}:
            raise InvalidInput(f"{path}: {part.kid} is not a key of the authority (old or new)")
        if not valid_signers(doc, [sig], known):
            raise InvalidInput(f"{path}: the signature of {part.kid} does not verify over this proposal")
        parts.append(sig)
    signed = combine(doc, parts)
    if previous is not None:
        TrustedRoster.restore(previous).accept(signed)
    else:
        TrustedRoster.restore(signed)
        if v1_authority is not None:
            check_threshold(signed, authority([(V1_HOLDER, load_authority_public(v1_authority))], 1), "the v1 key")
    roster_view(signed.roster)
    _write_json(out, signed.model_dump(mode="json"))
    click.echo(f"roster version {doc.version}: hash {digest}, signed by {', '.join(s.kid for s in signed.signatures)}")
    click.echo(f"wrote {out}: import it at a node (exchange roster import)")


# -- at a node ------------------------------------------------------------------------------------


@roster.command("import")
@node_file
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--expect-hash", default=None, help="The hash of the final version, compared out of band.")
@user_errors
def roster_import(node_path: Path, files: tuple[Path, ...], expect_hash: str | None) -> None:
    """Take the signed versions in FILES (one version each, or a chain) under the acceptance rules."""
    from exchange.app import local_roster  # the composition root opens the database

    config = NodeConfig.load(node_path)

    async def run() -> Any:
        async with local_roster(config, create=True) as held:  # a new node's first import makes its database
            return await held.import_chain([read_file(p) for p in files], expect_hash=expect_hash)

    done = run_async(run())
    if not done.changed:
        click.echo(f"{config.id}: already holds roster version {done.version} (hash {done.hash}); nothing to do")
        return
    click.echo(
        f"{config.id}: installed roster version {done.version} (hash {done.hash}), "
        f"from {done.before or 'none'}; expires {done.expires}"
    )


def roster_warning(node_path: Path) -> str | None:
    """The held version's expiry warning, for commands beside the node (`exchange peers`); None when
    there is none or the node's database cannot be read from here."""
    from exchange.app import local_roster

    async def run() -> str | None:
        async with local_roster(NodeConfig.load(node_path)) as held:
            status = held.status()
            return None if status is None else status.warning

    try:
        warning: str | None = run_async(run())
    except (ExchangeError, OSError):
        return None
    return warning


@roster.command("status")
@node_file
@as_json
@user_errors
def roster_status(node_path: Path, as_json: bool) -> None:
    """The roster v2 version a node holds."""
    from exchange.app import local_roster

    config = NodeConfig.load(node_path)

    async def run() -> Any:
        async with local_roster(config) as held:
            status = held.status()
            return None if status is None else {**status.__dict__, "holders": list(status.holders)}

    data = run_async(run())

    def render(s: Any) -> None:
        if s is None:
            click.echo(f"{config.id}: holds no roster v2 version (runs on its v1 roster file)")
            return
        state = "EXPIRED" if s["expired"] else "valid"
        click.echo(f"{config.id}: roster version {s['version']} of {s['federation']!r}, {state} until {s['expires']}")
        click.echo(f"  hash {s['hash']}; authority {s['threshold']} of {len(s['holders'])}; nodes {s['nodes']}")
        if s["warning"]:
            click.echo(f"warning: {s['warning']}", err=True)

    emit(data, as_json, render)
