"""Entry point of the `exchange` command: keys, federation, node, users, post, inbox, read, peers."""

from __future__ import annotations

import asyncio
import contextlib
import mimetypes
import signal
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import click
from rich.table import Table

from exchange.cli.audit import audit
from exchange.cli.channels import channels
from exchange.cli.client import Target, call, new_idempotency_key
from exchange.cli.db import db
from exchange.cli.export import export
from exchange.cli.ids import resolve_id, short
from exchange.cli.options import as_json, emit, node_file, run_async, token_opt, user_opt
from exchange.cli.output import cell, console, literal, one_line_errors, user_errors
from exchange.cli.roster import node_init, roster, roster_warning
from exchange.cli.rotation import node_rotate
from exchange.cli.users import users
from exchange.cli.webhooks import webhooks
from exchange.config import FederationConfig, NodeConfig
from exchange.crypto import b64e
from exchange.errors import InvalidInput
from exchange.keystore import NodeKeyFiles
from exchange.logs import configure as configure_logs
from exchange.model import BULLETIN_KINDS


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
    # Imported here, not at the top: the composition root loads the server, the console and the
    # database, which commands that only talk to a node or check a file never need.
    from exchange.provision import init_federation

    report = run_async(init_federation(folder, sample_passwords=True))
    if not report.created:
        click.echo("federation already initialised; nothing to do")
    for line in report.created:
        click.echo(f"created {line}")


async def _serve(configs: list[NodeConfig], *, reuse_port: bool = False) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    # Imported here, not at the top: the composition root loads the server, the console and the
    # database, which commands that only talk to a node or check a file never need.
    from exchange.app import RunningNode, keep_what_started, start_node

    running: list[RunningNode] = []
    try:
        for cfg in configs:
            running.append(await start_node(cfg, reuse_port=reuse_port))
            keep_what_started()  # these nodes run until the process ends
            click.echo(f"{cfg.id:<12} {cfg.endpoint}  ({cfg.name})")
        click.echo("ready; Ctrl-C to stop", err=True)
        await stop.wait()
    finally:
        for node in reversed(running):
            with contextlib.suppress(Exception):
                await node.stop()
        if running:
            click.echo("stopped", err=True)


@federation.command("up")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@user_errors
def federation_up(folder: Path) -> None:
    """Run every node of the federation in this process (initialising it first if needed)."""
    from exchange.provision import init_federation

    run_async(init_federation(folder, sample_passwords=True))
    fed = FederationConfig.load(folder)
    run_async(_serve([NodeConfig.load(p) for p in fed.nodes]))


@cli.group()
def node() -> None:
    """One node."""


@node.command("run")
@click.argument("node_path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Processes sharing the port and the PostgreSQL database (docs/operations.md, Workers).",
)
@click.option("--worker", "as_worker", is_flag=True, hidden=True, help="One of --workers' processes.")
@user_errors
def node_run(node_path: Path, workers: int, as_worker: bool) -> None:
    """Run one node until Ctrl-C or SIGTERM."""
    cfg = NodeConfig.load(node_path)
    if workers > 1:
        from exchange.app import local_users
        from exchange.cli.workers import Supervisor, check_workers

        check_workers(cfg, workers)

        async def prepare() -> None:
            async with local_users(cfg, create=True):  # opens the database once: an empty one gets its schema here
                pass

        run_async(prepare())
        raise SystemExit(Supervisor(node_path, cfg, workers).run())
    run_async(_serve([cfg], reuse_port=as_worker))


# -- users ----------------------------------------------------------------------------------


@cli.command()
@node_file
@user_opt
@token_opt
@click.argument("bulletin_id")
@click.option("--channel", required=True, help="The channel to re-post it to.")
@as_json
@user_errors
def forward(node_path: Path, user: str, token: str | None, bulletin_id: str, channel: str, as_json: bool) -> None:
    """Re-post a bulletin to another channel (refused for TLP:RED, AMBER+STRICT, no-onward-sharing).

    BULLETIN_ID is a whole id or a unique prefix of at least 8 hex characters."""
    target = Target.from_node(node_path, user, token)
    bulletin_id = run_async(resolve_id(target, bulletin_id))
    result = run_async(
        call(
            target,
            "POST",
            f"/api/v1/bulletins/{bulletin_id}/forward",
            {"channel": channel},
            idempotency_key=new_idempotency_key(),  # a dropped connection is retried once, safely
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
@click.option("--ref", multiple=True, help="Id of a bulletin this one refers to (or a unique prefix of 8+ hex).")
@click.option(
    "--attach",
    multiple=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A file to send with it.",
)
@click.option("--language", default="en", show_default=True)
@click.option("--expires", default=None, help="YYYY-MM-DD")
@click.option("--due", default=None, help="YYYY-MM-DD: when a request-for-information needs its answer.")
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
    due: str | None,
    as_json: bool,
) -> None:
    """Post a bulletin to a channel."""
    if no_onward_sharing and tlp is None:  # else the channel's default handling, without the marking
        raise InvalidInput("--no-onward-sharing needs --tlp: give the TLP it goes with")
    if body.startswith("@"):
        body_file = Path(body[1:])
        try:
            body = body_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise InvalidInput(f"cannot read --body file {body_file}: {(exc.strerror or str(exc)).lower()}") from exc
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"--body file {body_file} is not UTF-8 text") from exc
    target = Target.from_node(node_path, user, token)
    refs = [run_async(resolve_id(target, r)) for r in ref]
    bulletin: dict[str, Any] = {
        "kind": kind,
        "title": title,
        "body": body,
        "language": language,
        "expires": expires,
        "references": refs,
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
    if due is not None:
        bulletin["due"] = due
    if tlp is not None:
        bulletin["handling"] = {"tlp": tlp, "no_onward_sharing": no_onward_sharing}
    # With a key, a dropped connection is retried once: the node answers it with the first result.
    key = new_idempotency_key()
    result = run_async(call(target, "POST", f"/api/v1/channels/{channel}/bulletins", bulletin, idempotency_key=key))
    emit(
        result,
        as_json,
        lambda r: click.echo(f"posted {r['id']} (seq {r['seq']}) to {', '.join(r['recipients']) or 'no one else'}"),
    )


@cli.command()
@node_file
@user_opt
@token_opt
@click.option("--channel", required=True, help="The channel.")
@as_json
@user_errors
def rfis(node_path: Path, user: str, token: str | None, channel: str, as_json: bool) -> None:
    """A channel's requests for information: open, overdue and answered (by whom)."""
    result = run_async(call(Target.from_node(node_path, user, token), "GET", f"/api/v1/channels/{channel}/rfis"))

    def render(data: Any) -> None:
        table = Table("id", "state", "due", "from", "title", "answered by")
        for item in data["items"]:
            by = ", ".join(sorted({a["author"] for a in item["answers"]}))
            row = (item["state"], item["due"] or "", item["author"], item["title"], by)
            table.add_row(short(item["id"]), *map(cell, row))
        console.print(table)
        console.print(f"{data['open']} open, {data['overdue']} overdue, {data['answered']} answered", highlight=False)

    emit(result, as_json, render)


@cli.command()
@node_file
@user_opt
@token_opt
@click.option("--channel", default=None, help="Only this channel.")
@click.option("--unread", is_flag=True, help="Only bulletins you have not opened.")
@click.option("--since", default=None, help="Only those created since: YYYY-MM-DD or an RFC 3339 time (UTC).")
@click.option("--limit", default=50, type=click.IntRange(1, 500), show_default=True)
@click.option("--before", default=None, type=int, help="Cursor from a previous page: older bulletins.")
@click.option("--after", default=None, type=int, help="Cursor: bulletins stored after it, oldest first.")
@click.option(
    "--follow", is_flag=True, help="Keep running: print new bulletins as they arrive (after --after, or from now)."
)
@as_json
@user_errors
def inbox(
    node_path: Path,
    user: str,
    token: str | None,
    channel: str | None,
    unread: bool,
    since: str | None,
    limit: int,
    before: int | None,
    after: int | None,
    follow: bool,
    as_json: bool,
) -> None:
    """List the bulletins of your channels, newest first (oldest first with --after)."""
    if follow:
        from exchange.cli.follow import follow as follow_loop

        with contextlib.suppress(KeyboardInterrupt):
            run_async(follow_loop(Target.from_node(node_path, user, token), channel, after, as_json))
        return
    query: dict[str, Any] = {"order": "oldest" if after is not None else "newest", "limit": limit}
    optional = {"channel": channel, "since": since, "before": before, "after": after}
    query |= {k: v for k, v in optional.items() if v is not None}
    if unread:
        query["unread"] = "true"
    path = "/api/v1/bulletins?" + urlencode(query)
    result = run_async(call(Target.from_node(node_path, user, token), "GET", path))

    def render(data: Any) -> None:
        table = Table("id", "", "channel", "from", "kind", "TLP", "title", "created")
        for item in data["items"]:
            table.add_row(
                short(item["id"]),
                "new" if item["unread"] else "",
                *map(cell, (item[k] for k in ("channel", "author", "kind", "tlp", "title", "created"))),
            )
        console.print(table)
        if data["next"] is not None:
            more = "--after" if after is not None else "--before"
            console.print(f"more: {more} {data['next']}", highlight=False)

    emit(result, as_json, render)


@cli.command()
@node_file
@user_opt
@token_opt
@click.argument("bulletin_id")
@as_json
@user_errors
def read(node_path: Path, user: str, token: str | None, bulletin_id: str, as_json: bool) -> None:
    """Show one bulletin (the open is audited and receipted).

    BULLETIN_ID is a whole id or a unique prefix of at least 8 hex characters."""
    target = Target.from_node(node_path, user, token)
    bulletin_id = run_async(resolve_id(target, bulletin_id))
    result = run_async(call(target, "GET", f"/api/v1/bulletins/{bulletin_id}"))

    def render(r: Any) -> None:
        b = r["bulletin"]
        # All of it the author's node wrote (or this node stored): shown literally (exchange.cli.output).
        console.print(
            f"[bold]TLP:{literal(b['handling']['tlp'])}[/bold]  {literal(b['kind'])}  "
            f"from {literal(r['author_name'])} ({literal(r['author'])})"
            + (", signature verified" if r.get("signature_verified") is True else ", signature NOT verified")
        )
        console.print(f"[bold]{literal(b['title'])}[/bold]", highlight=False)
        console.print(literal(b["body"], lines=True), highlight=False)
        for key, values in b["indicators"].items():
            if values:
                console.print(f"  {literal(key)}: {literal(', '.join(map(str, values)))}", highlight=False)
        for rc in r["receipts"]:
            console.print(f"  receipt: {literal(rc['node'])} {literal(rc['status'])} at {literal(rc['at'])}")

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
        table = Table(
            "peer", "queued", "in flight", "delivered", "last success", "last error", "backoff until", "pulling until"
        )
        for p in data:
            table.add_row(
                *map(
                    cell,
                    (
                        p["peer"],
                        p["queued"],
                        p["in_flight"],
                        p["delivered"],
                        p["last_success"] or "-",
                        p["last_error"] or "-",  # may quote what a partner answered
                        p["backoff_until"] or "-",
                        p.get("pull_hold_until") or "-",
                    ),
                )
            )
        console.print(table)
        warning = roster_warning(node_path)  # the held roster version expires soon, or has expired
        if warning:
            click.echo(f"warning: {warning}", err=True)

    emit(result, as_json, render)


cli.add_command(audit)
cli.add_command(channels)
cli.add_command(db)
cli.add_command(export)
cli.add_command(roster)
node.add_command(node_init)
node.add_command(node_rotate)
cli.add_command(users)
cli.add_command(webhooks)


def main() -> None:
    """The `exchange` command. Every expected failure ends as one `error:` line on stderr and exit
    status 1, never a traceback: an ExchangeError, a node that times out or cannot be reached, a
    file that cannot be read. Click prints its own usage errors (exit 2)."""
    with one_line_errors():
        cli()
