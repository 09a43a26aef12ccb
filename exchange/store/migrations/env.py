"""Alembic's environment: exchange.store.schema runs it with the node's open connection, inside
the transaction of the upgrade, so an upgrade either completes or changes nothing.

Importing this module outside a migration does nothing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

from exchange.store.tables import metadata


def run_migrations(connection: sa.Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,  # what autogenerate and the tests compare the revisions with
        render_as_batch=True,  # SQLite alters a table by copying it; Alembic's batch mode does that
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


try:
    _config = context.config
except AttributeError:  # imported, not run by Alembic
    pass
else:
    _connection = _config.attributes.get("connection")
    if not isinstance(_connection, sa.Connection):
        raise RuntimeError("exchange's migrations run through `exchange db upgrade`, which passes a connection")
    run_migrations(_connection)
