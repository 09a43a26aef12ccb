"""`exchange audit`: verify a node's audit log (live or from an export), export it, sign a
checkpoint on demand, and trace a bulletin's chain of custody across the nodes of its channel."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from exchange.audit import quorum as policy
from exchange.audit.log import BundleCheck, KeyRing, LogReport
from exchange.audit.tlog_witness import WITNESS_KEY_TYPE, parse_verifier_key
from exchange.audit.trace import GAP, NONE, OK, REFUSED, Step, Trace, assemble
from exchange.cli.bundles import export_to, stream_lines
from exchange.cli.client import Target, call
from exchange.cli.ids import resolve_id
from exchange.cli.lines import read_lines
from exchange.cli.output import cell, console, err_console, literal, plain, user_errors
from exchange.cli.quorum import by_whom, finish_with_quorum, trace_designated, witnesses_per_log
from exchange.cli.verify_ranges import checkpoint_opener, default_workers, verify_in_ranges
from exchange.config import NodeConfig
from exchange.crypto import b64e
from exchange.errors import AuditTampered, BadEntry, ExchangeError, InvalidInput, StoredRosterInvalid
from exchange.keystore import load_authority_public, load_federation
from exchange.protocol.roster import Federation

Progressed = Callable[[int], None]  # called with the number of entries checked so far
PROGRESS_FROM = 10_000  # entries: smaller logs verify too fast for a progress bar to help


def keys_of(node_path: Path) -> KeyRing:
    """The roster keys, from the node's own roster file checked against the federation authority,
    and the keys of the C2SP witnesses the node file configures (their cosignatures count too)."""
    config = NodeConfig.load(node_path)
    vkeys = (parse_verifier_key(w.vkey, WITNESS_KEY_TYPE) for w in config.tlog_witnesses)
    c2sp = {vkey.name: vkey.key for vkey in vkeys}
    return KeyRing.from_federation(_held_view(config) or load_federation(config), c2sp)


def _held_view(config: NodeConfig) -> Federation | None:
    """The roster v2 version the node holds, as its wiring runs on it (each node's keys across
    rotations, docs/protocol.md 6a.13); None if it holds none or its database is not reachable
    from here (then its v1 roster file is what the keys come from)."""
    from exchange.app import local_roster  # the composition root opens the database

    async def held() -> Federation | None:
        async with local_roster(config) as roster:
            return roster.view()

    try:
        view: Federation | None = asyncio.run(held())
    except StoredRosterInvalid:
        raise  # reachable, and edited: not a reason to take the keys from elsewhere quietly
    except (ExchangeError, OSError):
        return None
    return view


def _feed(
    check: BundleCheck,
    lines: list[bytes],
    progress: Progressed | None,
    on_header: Callable[[int], None] | None,
) -> None:
    """Feed a batch of lines; tell `on_header` the announced size once the header is read."""
    had_header = check.header is not None
    check.feed_lines(lines)
    if check.header is not None:
        if not had_header and on_header is not None:
            on_header(int(check.header["size"]))
        if progress is not None:
            progress(check.verifier.checked)


async def verify_node(
    target: Target,
    keys: KeyRing,
    *,
    fresh: bool = True,
    witness: bool = True,
    quorum: int = 0,
    witnesses: int | None = None,
    progress: Progressed | None = None,
    on_header: Callable[[int], None] | None = None,
    node: str | None = None,
) -> LogReport:
    """Verify a live node's log through its API: sign a fresh checkpoint, then check a full export.
    With `witnesses` (per log), `quorum` counts the log's designated witnesses only (exchange.audit.quorum).
    With `node`, an export of another node's (genuine) log is refused once its header is read.

    Raises AuditTampered (BadEntry names the first bad entry) if the log does not verify.
    """
    warnings: list[str] = []
    if fresh:
        try:
            await call(target, "POST", "/api/v1/audit/checkpoint" + ("" if witness else "?witness=false"))
        except ExchangeError as exc:
            warnings.append(f"no fresh checkpoint: {exc.detail}")
    with checkpoint_opener(default_workers()) as opener:
        check = BundleCheck(keys=keys, opener=opener)
        async for lines in stream_lines(target, "/api/v1/audit/export"):
            _feed(check, lines, progress, on_header)
            if node is not None and check.header is not None and check.header.get("node") != node:
                raise AuditTampered(f"{target.url} served the audit log of {check.header.get('node')!r}, not of {node}")
    report = finish_with_quorum(check, quorum, witnesses)
    return replace(report, warnings=(*report.warnings, *warnings))


def verify_bundle(
    path: Path,
    keys: KeyRing | None = None,
    *,
    authority: Path | None = None,
    quorum: int = 0,
    witnesses: int | None = None,
    progress: Progressed | None = None,
    on_header: Callable[[int], None] | None = None,
    workers: int = 1,
) -> LogReport:
    """Verify an export bundle file offline (`quorum` and `witnesses` as for `verify_node`): a
    large full export with `workers` processes (exchange.cli.verify_ranges), else on one core;
    the checkpoints' signatures on `workers` threads either way."""
    anchor = load_authority_public(authority) if authority else None
    with checkpoint_opener(workers) as opener:
        if workers > 1:
            report = verify_in_ranges(
                path,
                BundleCheck(keys=keys, authority=anchor, opener=opener),
                lambda check: finish_with_quorum(check, quorum, witnesses),
                workers=workers,
                progress=progress,
                on_header=on_header,
            )
            if report is not None:
                return report
        check = BundleCheck(keys=keys, authority=anchor, opener=opener)
        with path.open("rb") as fh:
            for lines in read_lines(fh):
                _feed(check, lines, progress, on_header)
    return finish_with_quorum(check, quorum, witnesses)


def report_json(report: LogReport) -> dict[str, Any]:
    """A verification report as JSON."""

    def cp(c: Any) -> Any:
        return None if c is None else {"size": c.size, "root": b64e(c.root), "witnesses": list(c.witnesses)}

    return {
        "ok": True,
        "node": report.node,
        "complete": report.complete,
        "entries": report.entries,
        "root": b64e(report.root),
        "checkpoints": len(report.checkpoints),
        "latest": cp(report.latest),
        "latest_witnessed": cp(report.latest_witnessed),
        "tail": report.tail,
        "warnings": list(report.warnings),
        "quorum": None
        if report.quorum is None
        else {
            "designated": list(report.quorum.designated),
            "counted": list(report.quorum.counted),
            "not_designated": list(report.quorum.not_designated),
        },
    }


def render_report(report: LogReport) -> None:
    """A verification report for people."""
    kind = "every entry recomputed" if report.complete else "entries checked by inclusion proofs"
    # A bundle comes from elsewhere: what it names is shown literally (exchange.cli.output).
    console.print(f"[green]OK[/green] audit log of [bold]{literal(report.node)}[/bold] verifies ({kind})")
    console.print(f"  entries      {report.entries}, root {b64e(report.root)}")
    latest, witnessed = report.latest, report.latest_witnessed
    if latest is None:
        console.print("  checkpoints  none: nothing signed yet, so nothing above proves who wrote this log")
    else:
        by = literal(by_whom(latest.witnesses, report.quorum.designated if report.quorum else None))
        console.print(
            f"  checkpoints  {len(report.checkpoints)} checked; latest of size {latest.size}, co-signed by {by}"
        )
        if witnessed is not None and witnessed is not latest:
            console.print(f"  witnessed    up to size {witnessed.size}, by {literal(', '.join(witnessed.witnesses))}")
    if report.tail:
        console.print(f"  tail         {report.tail} newer entries not covered by a checkpoint yet")
    for warning in report.warnings:
        console.print(f"  [yellow]warning:[/yellow] {literal(warning)}", highlight=False)


def _progress_bar() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    )


def _run_verify(run: Callable[[Progressed, Callable[[int], None]], LogReport], as_json: bool) -> None:
    with _progress_bar() as bar:
        task = bar.add_task("verifying", total=None, visible=False)
        headers: list[int] = []

        def on_header(size: int) -> None:
            headers.append(size)
            bar.update(task, total=size, visible=size >= PROGRESS_FROM)
            if len(headers) > 1:  # read again: the check on several cores gave up, one core checks it all
                bar.update(task, description="verifying on one core", completed=0)

        try:
            report = run(lambda done: bar.update(task, completed=done), on_header)
        except (AuditTampered, InvalidInput) as exc:
            if as_json:  # a script reads a verdict, whatever failed (a truncated bundle, a bad count)
                index = exc.index if isinstance(exc, BadEntry) else None
                click.echo(json.dumps({"ok": False, "error": exc.detail, "first_bad_entry": index}, indent=2))
                sys.exit(1)
            if isinstance(exc, InvalidInput):
                raise  # one `error:` line (`user_errors`)
            bar.stop()
            err_console.print(
                f"[red]FAILED:[/red] the audit log does not verify: {literal(exc.detail)}", highlight=False
            )
            sys.exit(1)
    if as_json:
        click.echo(json.dumps(report_json(report), indent=2))
    else:
        render_report(report)


@click.group()
def audit() -> None:
    """The tamper-evident audit log: verify, export, checkpoint, trace."""


node_opt = click.option(
    "--node",
    "node_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The node's file, e.g. nodes/nl-customs.toml.",
)
user_opt = click.option("--user", default="auditor", show_default=True, help="Local user whose token file to use.")
token_opt = click.option(
    "--token", envvar="EXCHANGE_TOKEN", default=None, help="API token (else the user's token file)."
)
as_json_opt = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")


def _need_node(node_path: Path | None) -> Path:
    if node_path is None:
        raise click.UsageError("--node is required")
    return node_path


@audit.command("verify")
@node_opt
@click.option(
    "--bundle",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Verify this export offline instead of the live node.",
)
@click.option(
    "--authority",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Federation authority public key that must sign the bundle's roster (offline, without --node).",
)
@click.option("--quorum", default=0, show_default=True, help="Cosignatures by designated witnesses the log needs.")
@click.option("--witnesses", "per_log", type=int, help="Witnesses per log (default: the node file's, else 5).")
@click.option(
    "--fresh/--no-fresh", default=True, show_default=True, help="Live: have the node sign a checkpoint first."
)
@click.option("--witness/--no-witness", default=True, show_default=True, help="Live: have partners co-sign it too.")
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=64),
    default=None,
    help="Bundle: processes that check a large log's entries (default: one per core, at most 8).",
)
@user_opt
@token_opt
@as_json_opt
@user_errors
def audit_verify(
    node_path: Path | None,
    bundle: Path | None,
    authority: Path | None,
    quorum: int,
    per_log: int | None,
    fresh: bool,
    witness: bool,
    workers: int | None,
    user: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Recompute the log's tree; check entry order, leaf hashes, checkpoint signatures, cosignatures
    and consistency; with --quorum, count the log's designated witnesses only. Exits 1 and names the
    first bad entry if it does not verify."""
    k = witnesses_per_log(node_path, per_log)
    policy.check_policy(quorum, k)
    if bundle is not None:
        keys = keys_of(node_path) if node_path is not None else None
        _run_verify(
            lambda progress, on_header: verify_bundle(
                bundle,
                keys,
                authority=authority,
                quorum=quorum,
                witnesses=k,
                progress=progress,
                on_header=on_header,
                workers=workers or default_workers(),
            ),
            as_json,
        )
        return
    node = _need_node(node_path)
    target, keys, expected = Target.from_node(node, user, token), keys_of(node), NodeConfig.load(node).id
    _run_verify(
        lambda progress, on_header: asyncio.run(
            verify_node(
                target,
                keys,
                fresh=fresh,
                witness=witness,
                quorum=quorum,
                witnesses=k,
                progress=progress,
                on_header=on_header,
                node=expected,
            )
        ),
        as_json,
    )


@audit.command("export")
@node_opt
@click.option("--bulletin", default=None, help="Only this bulletin's entries, each with an inclusion proof.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
@user_opt
@token_opt
@user_errors
def audit_export(
    node_path: Path | None, bulletin: str | None, output: Path | None, user: str, token: str | None
) -> None:
    """Download a self-contained bundle (entries, signed checkpoints, proofs, roster) for offline checks."""
    node = _need_node(node_path)
    cfg = NodeConfig.load(node)
    out = output or Path(f"audit-{cfg.id}{'-' + bulletin[:12] if bulletin else ''}.jsonl")
    lines = asyncio.run(export_to(Target.from_node(node, user, token), out, bulletin))
    click.echo(f"wrote {out} ({lines} lines); check it with: exchange audit verify --bundle {out}")


@audit.command("checkpoint")
@node_opt
@click.option("--witness/--no-witness", default=True, show_default=True, help="Ask the partners to co-sign it.")
@user_opt
@token_opt
@as_json_opt
@user_errors
def audit_checkpoint(node_path: Path | None, witness: bool, user: str, token: str | None, as_json: bool) -> None:
    """Have the node sign a checkpoint of its log now, and show it with its cosignatures."""
    node = _need_node(node_path)
    path = "/api/v1/audit/checkpoint" + ("" if witness else "?witness=false")
    result = asyncio.run(call(Target.from_node(node, user, token), "POST", path))
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    click.echo(plain(result["note"], lines=True), nl=False)
    for witness_node, outcome in sorted(result.get("witnessing", {}).items()):
        click.echo(f"# {plain(witness_node)}: {plain(outcome)}", err=True)  # a witness's answer


_MARK = {
    OK: "[green]✓[/green]",
    GAP: "[bold red]GAP[/bold red]",
    NONE: "[dim]-[/dim]",
    REFUSED: "[yellow]refused[/yellow]",
}


def _cell(step: Step) -> str:
    when = f" {step.at[11:19]}" if step.at and step.status == OK else ""
    return _MARK.get(step.status, literal(step.status)) + literal(when)


def render_trace(trace: Trace, designated: Mapping[str, tuple[str, ...]] | None = None) -> None:
    """A chain of custody as a table, with its gaps and each node's evidence (and, given each log's
    `designated` witnesses, which of its cosigners are)."""
    # Logs and answers of other nodes: what they say is shown literally (exchange.cli.output).
    others = literal(", ".join(r for r in trace.recipients if r != trace.author))
    bid, channel, author = literal(trace.bulletin), literal(trace.channel), literal(trace.author)
    console.print(f"bulletin [bold]{bid}[/bold] in channel {channel}, by {author}, to {others}")
    console.print(f"  posted at {author}: {_cell(trace.posted)}  {literal(trace.posted.detail)}", highlight=False)
    table = Table("recipient", "sent", "received", "receipt", "opened")
    for leg in trace.legs:
        table.add_row(cell(leg.recipient), *(_cell(leg.step(k)) for k in ("sent", "received", "receipt", "opened")))
    console.print(table)
    if trace.author_opened.status == OK:
        console.print(f"  at {author}: {literal(trace.author_opened.detail)}", highlight=False)
    for step in trace.gaps:
        gap = f"{literal(step.kind)} at {literal(step.node)}: {literal(step.detail)}"
        console.print(f"  [bold red]GAP[/bold red] {gap}", highlight=False)
    for ev in trace.evidence:
        if ev.error is not None:
            mark = "[bold red]INVALID[/bold red]" if ev.invalid else "[yellow]unchecked[/yellow]"
            console.print(f"  {mark} {literal(ev.node)}: {literal(ev.error)}", highlight=False)
        elif ev.checkpoint is not None:
            by = by_whom(ev.checkpoint.witnesses, designated.get(ev.node) if designated is not None else None)
            proven = f"{len(ev.entries)} entries proven in its checkpoint {ev.checkpoint.size}"
            console.print(f"  {literal(ev.node)}: {proven} (co-signed by {literal(by)})")


def trace_json(trace: Trace, designated: Mapping[str, tuple[str, ...]] | None = None) -> dict[str, Any]:
    """A chain of custody as JSON (with each log's `designated` witnesses, if given)."""

    def step(s: Step) -> dict[str, Any]:
        return {"kind": s.kind, "node": s.node, "status": s.status, "detail": s.detail, "at": s.at, "idx": s.idx}

    return {
        "bulletin": trace.bulletin,
        "channel": trace.channel,
        "author": trace.author,
        "posted": step(trace.posted),
        "legs": [{"recipient": leg.recipient, "steps": [step(s) for s in leg.steps]} for leg in trace.legs],
        "gaps": [step(s) for s in trace.gaps],
        "evidence": [
            {
                "node": e.node,
                "entries": len(e.entries),
                "checkpoint": e.checkpoint.size if e.checkpoint else None,
                "witnesses": list(e.checkpoint.witnesses) if e.checkpoint else [],
                "designated_witnesses": None if designated is None else list(designated.get(e.node, ())),
                "error": e.error,
                "invalid": e.invalid,
            }
            for e in trace.evidence
        ],
    }


async def trace_bulletin(target: Target, keys: KeyRing, bulletin: str) -> Trace:
    """Fetch every named node's evidence through the node's API, verify it here, build the chain."""
    bulletin = await resolve_id(target, bulletin)  # a whole id or a unique prefix (exchange.cli.ids)
    raw = await call(target, "GET", f"/api/v1/audit/trace/{bulletin}")
    return assemble(raw, keys)


@audit.command("trace")
@click.argument("bulletin_id")
@node_opt
@click.option("--strict", is_flag=True, help="Exit 2 if the chain of custody has a gap.")
@user_opt
@token_opt
@as_json_opt
@user_errors
def audit_trace(
    bulletin_id: str, node_path: Path | None, strict: bool, user: str, token: str | None, as_json: bool
) -> None:
    """Follow a bulletin across the nodes of its channel: posted, sent, received, receipt, opened.

    Every step is proven by an inclusion proof in a checkpoint signed by the node that logged it.
    A step that must have happened but is in no log shows as a GAP. Exits 1 if a node's evidence
    fails verification.
    """
    node = _need_node(node_path)
    keys = keys_of(node)
    trace = asyncio.run(trace_bulletin(Target.from_node(node, user, token), keys, bulletin_id))
    designated = trace_designated(trace, keys, witnesses_per_log(node, None))
    if as_json:
        click.echo(json.dumps(trace_json(trace, designated), indent=2))
    else:
        render_trace(trace, designated)
    if trace.invalid:
        sys.exit(1)
    if strict and trace.gaps:
        sys.exit(2)
