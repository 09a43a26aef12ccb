"""What the console shows beside a checkpoint's "verifies" tick is the signed note's own size and
root: a hand-edited `audit_checkpoints` row whose size no longer matches its note showed the
edited size as verified while the node ran (found by a read-only review). On SQLite and PostgreSQL."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from exchange.store.tables import audit_checkpoints
from tests.conftest import MakeFederation


async def test_a_checkpoint_row_edited_away_from_its_note_is_not_shown_as_verified(
    make_federation: MakeFederation,
) -> None:
    fed = await make_federation()
    nl = fed["nl-customs"]
    audit = nl.service.audit
    signed = await audit.sign_checkpoint(witness=False)
    (cp,) = [c for c in await audit.recent_checkpoints() if c.size == signed.checkpoint.size]
    assert audit.check_checkpoint(cp).ok

    async def edit(conn: AsyncConnection, _: object) -> None:
        await conn.execute(
            sa.update(audit_checkpoints).where(audit_checkpoints.c.size == cp.size).values(size=cp.size + 1000)
        )

    await nl.service.store.write(edit)
    (edited,) = [c for c in await audit.recent_checkpoints() if c.note == cp.note]
    assert edited.size == cp.size + 1000
    check = audit.check_checkpoint(edited)
    assert not check.ok and check.error is not None and "differ from the signed note" in check.error
