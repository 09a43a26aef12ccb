"""Issue 10, must show 4: the database edited by hand under real nodes, on SQLite and PostgreSQL.

- A bulletin's content, ciphertext or TLP edited at a recipient: the API, the CLI and the console
  refuse to show it and name the edit, never with "signature verified"; restored, it verifies.
- The log's tail deleted after a witnessed checkpoint: `audit verify` (live, and an export checked
  offline) names the first missing entry; a stopped node whose tail is deleted refuses to start,
  in one line and exit status 1, and writes nothing under the deleted indices.
- Entries rewritten while a node is stopped: a clean stop signs a checkpoint of every entry, so a
  rewrite is caught at the next start (leaf hashes) or by `audit verify` (entries); what remains
  is the window docs/audit.md states, shown here as it is.
- A checkpoint smaller than one a witness co-signed, pushed to it: refused, kept as evidence and
  audited; an honest log never pushes one.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from exchange.app import start_node
from exchange.cli.audit import verify_node
from exchange.crypto import canonical_json
from exchange.errors import AuditTampered, BadEntry, SplitView
from exchange.merkle import leaf_hash
from exchange.service.held_receipts import checked_receipts
from exchange.store import (
    Store,
    audit_checkpoints,
    audit_cosignatures,
    audit_log,
    bulletins,
    channel_events,
    receipt_batches,
    receipts,
)
from tests.conftest import Federation, MakeFederation, Member, console_session
from tests.test_audit_e2e import checkpoint, entries, keys, post, target, wait_for

NL, KE = "nl-customs", "ke-customs"
PASSWORD = "a long passphrase for tests"


async def run_cli(*args: str, timeout: float = 120) -> tuple[int, str, str]:
    """The real `exchange` command in a child process, while this loop keeps the nodes serving."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exchange.cli", *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return int(proc.returncode or 0), out.decode(), err.decode()


Columns = dict[str, Any]


async def bulletin_row(member: Member, bid: str) -> Columns:
    async with member.service.store.read() as conn:
        return dict((await conn.execute(sa.select(bulletins).where(bulletins.c.id == bid))).one()._mapping)


async def overwrite(member: Member, bid: str, values: Columns) -> None:
    async with member.service.store.engine.begin() as conn:
        await conn.execute(sa.update(bulletins).where(bulletins.c.id == bid).values(**values))


def flipped_ciphertext(row: Columns) -> Columns:
    env = json.loads(bytes(row["envelope"]))
    text = env["ciphertext"]
    env["ciphertext"] = text[:30] + ("A" if text[30] != "A" else "B") + text[31:]
    return {"envelope": json.dumps(env).encode()}


EDITS: dict[str, tuple[Callable[[Columns], Columns], str]] = {
    "content": (
        lambda row: {"content": row["content"].replace("toner cartridges", "nothing to see")},
        "its stored content differs from what its signed envelope decrypts to: the content was changed",
    ),
    "ciphertext": (
        flipped_ciphertext,
        "its ciphertext does not match the hash its signed header commits to: the ciphertext was changed",
    ),
    "TLP": (
        lambda row: {"tlp": "CLEAR"},
        "its stored TLP ('CLEAR') differs from the signed header's ('AMBER'): the TLP was changed",
    ),
}


async def console_page(member: Member, path: str) -> tuple[int, str]:
    """GET a console page as the signed-in officer."""
    async with console_session(member, "officer", PASSWORD) as http, http.get(path, allow_redirects=False) as resp:
        return resp.status, await resp.text()


async def test_an_edited_bulletin_is_refused_by_the_api_the_cli_and_the_console_naming_the_edit(
    make_federation: MakeFederation,
) -> None:
    fed = await make_federation()
    nl, ke = fed[NL], fed[KE]
    await ke.service.users.set_password("officer", PASSWORD, actor="test")
    bid = await post(nl)
    await wait_for(nl, "bulletin.delivered", bid)
    status, shown, _ = await ke.api("GET", f"/api/v1/bulletins/{bid}")
    assert status == 200 and shown["signature_verified"] is True
    original = await bulletin_row(ke, bid)
    ke_file = str(fed.folder / f"{KE}.toml")
    opened = len(await entries(ke, f"event=bulletin.opened&bulletin={bid}"))

    for name, (edit, named) in EDITS.items():
        await overwrite(ke, bid, edit(original))
        status, problem, ctype = await ke.api("GET", f"/api/v1/bulletins/{bid}")
        assert (status, ctype) == (500, "application/problem+json"), (name, status, problem)
        assert problem["detail"] == f"bulletin {bid} is not shown: {named}", problem
        assert "signature_verified" not in problem

        page_status, page = await console_page(ke, f"/console/bulletins/{bid}")
        assert page_status == 500 and "Signature verified" not in page, name
        assert named.replace("'", "&#39;") in page, name

        if name == "TLP":  # the CLI, once: a separate process, one line, exit status 1
            code, out, err = await run_cli("read", "--node", ke_file, bid)
            assert code == 1 and out == "" and err.count("\n") == 1 and named in err, (out, err)
        await overwrite(ke, bid, {column: original[column] for column in edit(original)})

    # Nothing was recorded as opened by the refused reads, and each edit was audited once.
    audited = await entries(ke, f"event=bulletin.unverified&bulletin={bid}")
    assert [e["problem"] for e in audited] == [named for _, named in EDITS.values()]
    assert len(await entries(ke, f"event=bulletin.opened&bulletin={bid}")) == opened == 1
    status, shown, _ = await ke.api("GET", f"/api/v1/bulletins/{bid}")
    assert status == 200 and shown["signature_verified"] is True


# -- the log's tail ---------------------------------------------------------------------------------

Rows = list[tuple[int, bytes, bytes]]


async def audit_rows(url: str) -> Rows:
    store = await Store.open(url)
    try:
        async with store.read() as conn:
            rows = await conn.execute(sa.select(audit_log.c.idx, audit_log.c.entry, audit_log.c.leaf_hash))
            return sorted((int(i), bytes(e), bytes(h)) for i, e, h in rows)
    finally:
        await store.close()


async def table_rows(url: str, table: sa.Table) -> list[dict[str, Any]]:
    store = await Store.open(url)
    try:
        async with store.read() as conn:
            return [dict(r._mapping) for r in await conn.execute(sa.select(table))]
    finally:
        await store.close()


async def in_database(url: str, *statements: Any) -> None:
    """Run SQL on a stopped node's database, as someone with access to it would."""
    store = await Store.open(url)
    try:
        async with store.engine.begin() as conn:
            for statement in statements:
                await conn.execute(statement)
    finally:
        await store.close()


async def put_back(url: str, rows: Rows) -> None:
    await in_database(
        url,
        sa.delete(audit_log),
        sa.insert(audit_log).values([{"idx": i, "entry": e, "leaf_hash": h} for i, e, h in rows]),
    )


async def test_deleting_the_logs_tail_after_a_witnessed_checkpoint_is_named_and_the_node_will_not_start(
    make_federation: MakeFederation,
) -> None:
    fed: Federation = await make_federation()
    nl = fed[NL]
    bid = await post(nl)
    await wait_for(nl, "bulletin.delivered", bid)
    witnessed = await checkpoint(nl)
    assert witnessed["witnesses"] == [KE]
    cut = witnessed["size"] - 3
    node_file, bundle, url = str(fed.folder / f"{NL}.toml"), str(fed.folder / "nl.jsonl"), nl.config.database_url

    # While it runs: the live verify and an export checked offline both name the first lost entry.
    async with nl.service.store.engine.begin() as conn:
        kept = (await conn.execute(sa.select(audit_log).where(audit_log.c.idx >= cut))).all()
        await conn.execute(sa.delete(audit_log).where(audit_log.c.idx >= cut))
    with pytest.raises(BadEntry) as caught:
        await verify_node(target(nl), keys(nl), fresh=False)
    assert caught.value.index == cut and "is missing" in caught.value.detail, caught.value.detail
    code, _, err = await run_cli("audit", "export", "--node", node_file, "-o", bundle)
    assert code == 0, err
    authority = str(nl.config.authority_key_path)
    code, out, err = await run_cli("audit", "verify", "--bundle", bundle, "--authority", authority)
    assert code == 1 and f"entry {cut}: is missing" in err, (out, err)
    async with nl.service.store.engine.begin() as conn:
        await conn.execute(sa.insert(audit_log), [dict(r._mapping) for r in kept])
    assert (await verify_node(target(nl), keys(nl), fresh=False)).entries >= witnessed["size"]

    # Stopped (a checkpoint is signed as it stops), then its tail deleted: it refuses to start, in
    # one line, and nothing is written under the deleted indices. With the channels' logs deleted
    # too, the node re-imported the provisioned ones first, writing their entries under the deleted
    # indices before its log was checked (found by a read-only review).
    await fed.stop(NL)
    rows = await audit_rows(url)
    signed = len(rows)
    events = await table_rows(url, channel_events)
    await in_database(url, sa.delete(audit_log).where(audit_log.c.idx >= cut), sa.delete(channel_events))
    expected = (
        f"the audit log holds {cut} entries, but this node signed a checkpoint of {signed}: "
        f"entries {cut} to {signed - 1} were deleted"
    )
    with pytest.raises(AuditTampered) as refused:
        await start_node(nl.config)
    assert refused.value.detail.startswith(expected), refused.value.detail
    code, out, err = await run_cli("node", "run", node_file)
    assert code == 1 and err.startswith("error: ") and err.count("\n") == 1 and expected in err, (out, err)
    assert await audit_rows(url) == rows[:cut]

    # Put back, it starts and verifies, every checkpoint and the one signed at the stop included.
    await put_back(url, rows)
    await in_database(url, sa.insert(channel_events).values(events))
    await fed.start(NL)
    report = await verify_node(target(nl), keys(nl), witness=False)
    assert report.latest is not None and report.latest.size > signed
    assert signed in [cp.size for cp in report.checkpoints]


# -- rewriting the log while the node is stopped ----------------------------------------------------


def rewritten(rows: Rows, k: int, *, leaf: bool) -> Any:
    """Entry k with another user; its stored leaf hash rewritten to match too if `leaf`."""
    idx, entry, old_leaf = rows[k]
    body = canonical_json({**json.loads(entry), "at": "2020-01-01T00:00:00.000Z"})
    values = {"entry": body, "leaf_hash": leaf_hash(body) if leaf else old_leaf}
    return sa.update(audit_log).where(audit_log.c.idx == idx).values(**values)


async def test_a_clean_stop_signs_every_entry_so_a_rewrite_while_stopped_is_caught(
    make_federation: MakeFederation,
) -> None:
    fed = await make_federation()
    nl = fed[NL]
    bid = await post(nl)
    await wait_for(nl, "bulletin.delivered", bid)
    witnessed = await checkpoint(nl)
    await wait_for(nl, "bulletin.delivered", await post(nl))  # entries no checkpoint covers yet
    url = nl.config.database_url

    # A clean stop ends with node.stopped, and signs a checkpoint of every entry, that one included.
    await fed.stop(NL)
    rows = await audit_rows(url)
    store = await Store.open(url)
    async with store.read() as conn:
        latest = await conn.scalar(sa.select(sa.func.max(audit_checkpoints.c.size)))
    await store.close()
    assert latest == len(rows) > witnessed["size"]
    assert json.loads(rows[-1][1])["event"] == "node.stopped"
    k = witnessed["size"] + 1  # an entry that only the checkpoint signed at the stop covers

    # A careful rewrite (the entry and its leaf hash): the next start refuses, naming the span.
    await in_database(url, rewritten(rows, k, leaf=True))
    with pytest.raises(AuditTampered) as refused:
        await start_node(nl.config)
    assert f"entries {witnessed['size']} to {len(rows) - 1} no longer give the root signed in checkpoint" in (
        refused.value.detail
    ), refused.value.detail

    # The entry alone rewritten: it starts (its leaf hashes still give the signed root), and
    # `audit verify` names the entry.
    await put_back(url, rows)
    await in_database(url, rewritten(rows, k, leaf=False))
    await fed.start(NL)
    with pytest.raises(BadEntry) as caught:
        await verify_node(target(nl), keys(nl), fresh=False)
    assert caught.value.index == k and "does not match its stored leaf hash" in caught.value.detail
    await fed.stop(NL)
    _, entry, leaf = rows[k]
    await in_database(url, sa.update(audit_log).where(audit_log.c.idx == k).values(entry=entry, leaf_hash=leaf))

    # The window docs/audit.md states: without the checkpoint signed at the stop (a crash before
    # it, or its row deleted by someone with database access), the entries after the last
    # checkpoint are unsigned. A lazy rewrite of one is still caught at the next start; a careful
    # one is signed as it is, and the witness, which saw only the checkpoint before them, co-signs.
    no_later_checkpoints = sa.delete(audit_checkpoints).where(audit_checkpoints.c.size > witnessed["size"])
    await in_database(url, no_later_checkpoints, rewritten(rows, k, leaf=False))
    with pytest.raises(AuditTampered) as refused:
        await start_node(nl.config)
    assert refused.value.detail == (
        f"audit entry {k}, which no checkpoint covers yet, does not match its stored leaf hash: it was changed"
    )
    await in_database(url, rewritten(rows, k, leaf=True))
    await fed.start(NL)
    report = await verify_node(target(nl), keys(nl))
    assert report.entries > k and report.latest is not None and report.latest.witnesses == (KE,)


# -- a rollback pushed to a witness -----------------------------------------------------------------


async def test_a_witness_keeps_a_rollback_as_evidence_and_an_honest_log_never_pushes_one(
    make_federation: MakeFederation,
) -> None:
    """nl's log loses its tail while it is stopped, with the checkpoints and cosignatures over it,
    so on its own it is coherent again. When it asks ke to co-sign its next checkpoint, smaller than
    the one ke co-signed, ke does not (it answers `stale`: an honest log's worker may push a smaller
    one late, tests/test_witness_smaller_push.py); when ke pulls nl's latest, smaller than what it
    co-signed, it refuses, keeps both signed notes, and audits it."""
    fed = await make_federation()
    nl, ke = fed[NL], fed[KE]
    early = await checkpoint(nl, witness=False)
    bid = await post(nl)
    await wait_for(nl, "bulletin.delivered", bid)
    witnessed = await checkpoint(nl)
    assert witnessed["witnesses"] == [KE]

    # An honest log puts its checkpoints to a witness one at a time, never a smaller one after a
    # larger one: asked to, it sends nothing.
    older = await nl.service.audit.keeper.checkpoint_at(early["size"])
    outcome = await nl.service.audit.witness.request_cosignatures(older, [KE])
    assert outcome[KE] == f"superseded by checkpoint {witnessed['size']}"
    status, view, _ = await ke.api("GET", "/api/v1/audit/witnessed", user="auditor")
    assert status == 200 and view["split_views"] == []

    await fed.stop(NL)
    cut = early["size"]  # the entries after the first checkpoint, and every checkpoint after it
    await in_database(
        nl.config.database_url,
        sa.delete(audit_log).where(audit_log.c.idx >= cut),
        sa.delete(audit_checkpoints).where(audit_checkpoints.c.size > cut),
        sa.delete(audit_cosignatures).where(audit_cosignatures.c.size > cut),
    )
    await fed.start(NL)
    shown = await checkpoint(nl)
    assert shown["size"] < witnessed["size"] and shown["witnesses"] == []
    assert shown["witnessing"][KE] == f"superseded: {KE} co-signed checkpoint {witnessed['size']} already"
    assert ke.node is not None
    for _ in range(2):  # the second time is refused again, and recorded no more
        with pytest.raises(SplitView, match=f"it went back to size {shown['size']}"):
            await ke.node.service.audit.witness.pull(NL)

    status, view, _ = await ke.api("GET", "/api/v1/audit/witnessed", user="auditor")
    assert status == 200
    assert {log["node"]: log["size"] for log in view["logs"]}[NL] == witnessed["size"]  # it did not go back
    (split,) = view["split_views"]
    assert split["node"] == NL and split["detail"] == f"it went back to size {shown['size']}"
    assert f"\n{witnessed['size']}\n" in split["seen"] and f"\n{shown['size']}\n" in split["shown"]
    (audited,) = await entries(ke, f"event=audit.split_view&peer={NL}")
    assert (audited["seen_size"], audited["shown_size"]) == (witnessed["size"], shown["size"])


async def test_receipt_rows_whose_signed_receipts_do_not_verify_are_not_shown(make_federation: MakeFederation) -> None:
    """The bulletin page's "signed receipts by the reading nodes" and the auditor's held receipts
    show a row only if its stored receipt verifies when shown: rows written by hand (no receipt,
    or a partner's real receipt of another kind) are left out; the real one is shown."""
    fed = await make_federation()
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    bid = await post(nl)
    await wait_for(nl, "bulletin.delivered", bid)
    async with nl.service.store.read() as conn:  # made from its batch: the author keeps it as a leaf (protocol 10.4)
        (shown_first,) = await checked_receipts(conn, nl.service.fed, bid)
    genuine = shown_first.receipt
    assert genuine.startswith("{")
    forged = {"bulletin_id": bid, "node": ke.id, "status": "opened", "at": "2020-02-02T02:02:02.000Z"}
    await in_database(nl.config.database_url, sa.insert(receipts).values(**forged, receipt=genuine))
    held = await nl.service.audit.receipts_held(bid)
    assert [(r.node, r.status) for r in held] == [(ke.id, "received")]
    await in_database(
        nl.config.database_url,
        sa.update(receipts).where(receipts.c.bulletin_id == bid, receipts.c.status == "opened").values(receipt="{}"),
    )
    assert [(r.node, r.status) for r in await nl.service.audit.receipts_held(bid)] == [(ke.id, "received")]
    await nl.service.users.set_password("officer", PASSWORD, actor="test")
    status, page = await console_page(nl, f"/console/bulletins/{bid}")
    assert status == 200, page
    assert "2020-02-02" not in page and "02:02" not in page
    # The API and `exchange read` showed every stored row as it was (found by a read-only review).
    status, view, _ = await nl.api("GET", f"/api/v1/bulletins/{bid}")
    assert status == 200, view
    shown = [(r["node"], r["status"], r["at"]) for r in view["receipts"]]
    assert (ke.id, "received") in [s[:2] for s in shown] and not [s for s in shown if s[2].startswith("2020")]
    await in_database(
        nl.config.database_url,
        sa.update(receipts).where(receipts.c.bulletin_id == bid, receipts.c.status == "opened").values(receipt="{not"),
    )
    status, view, _ = await nl.api("GET", f"/api/v1/bulletins/{bid}")  # was a 500
    assert status == 200 and (ke.id, "opened") not in [(r["node"], r["status"]) for r in view["receipts"]], view


@pytest.mark.parametrize("edit", ["bulletins", "statement", "idx", "batch"])
async def test_a_receipt_kept_as_a_batch_leaf_is_not_shown_once_its_batch_or_leaf_is_edited(
    make_federation: MakeFederation, edit: str
) -> None:
    """A partner's receipt taken in the batch form is kept as its batch statement and its leaf
    (protocol 10.4): its text is made when shown, and shown only if it verifies, so an edited
    bulletin list, statement, leaf index or batch reference leaves it out."""
    fed = await make_federation()
    nl, ke = fed["nl-customs"], fed["ke-customs"]
    bid = await post(nl)
    await wait_for(nl, "bulletin.delivered", bid)
    other = await post(nl)
    await wait_for(nl, "bulletin.delivered", other)
    assert [h.node for h in await nl.service.audit.receipts_held(bid)] == [ke.id]
    async with nl.service.store.read() as conn:
        row = (await conn.execute(sa.select(receipts).where(receipts.c.bulletin_id == bid))).one()
        second = (await conn.execute(sa.select(receipts).where(receipts.c.bulletin_id == other))).one()
    assert row.receipt == "" and row.batch is not None
    batch_row = receipt_batches.c.id == row.batch
    if edit == "bulletins":
        change: Any = sa.update(receipt_batches).where(batch_row).values(bulletins=other)
    elif edit == "statement":
        edited = sa.func.replace(receipt_batches.c.statement, '"status":"received"', '"status":"opened"')
        change = sa.update(receipt_batches).where(batch_row).values(statement=edited)
    elif edit == "idx":
        change = sa.update(receipts).where(receipts.c.bulletin_id == bid).values(idx=1)
    else:  # the other bulletin's batch
        change = sa.update(receipts).where(receipts.c.bulletin_id == bid).values(batch=second.batch, idx=second.idx)
    await in_database(nl.config.database_url, change)
    assert await nl.service.audit.receipts_held(bid) == []
    status, view, _ = await nl.api("GET", f"/api/v1/bulletins/{bid}")
    assert status == 200 and view["receipts"] == [], view


@pytest.mark.parametrize("edited", [b"{not json", b"[1,2]"], ids=["not-json", "not-an-object"])
async def test_an_audit_row_edited_into_no_entry_is_named_on_its_page(
    make_federation: MakeFederation, edited: bytes
) -> None:
    """The console's entry page was a 500 for such a row (found by a read-only review); it now
    shows the row with its proof failing, as the list and the API already did."""
    fed = await make_federation()
    nl = fed[NL]
    await nl.service.users.set_password("auditor", PASSWORD, actor="test")
    status, _, _ = await nl.api("POST", "/api/v1/audit/checkpoint?witness=false", user="auditor")
    assert status == 200
    await in_database(nl.config.database_url, sa.update(audit_log).where(audit_log.c.idx == 0).values(entry=edited))
    entry = await nl.service.audit.entry_with_proof(0)
    assert entry.proof.state == "failed" and entry.body == {"event": "(not an audit entry)"}
    async with console_session(nl, "auditor", PASSWORD) as http, http.get("/console/audit/entries/0") as resp:
        assert resp.status == 200
        assert "not an audit entry" in await resp.text()
