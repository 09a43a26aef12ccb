"""The store's schema revisions: which one a database is at, and the upgrade to the current one.

The migrations are Alembic's, run from here with the node's own connection (no alembic.ini):
`migrations/versions/` holds one file per revision, each naming the one before it. Revision 0001
is the schema of release 0.1.0, the first release, which had no version table; such a database is
recognised by its tables and columns and adopted (stamped 0001) by `exchange db upgrade`.

`Store.open` only reads the revision (one query) and refuses an older one with SchemaOutdated; it
never changes a deployed database. Only an empty database is brought to the current revision there.
A running node never imports Alembic (about 11 MB of a node's memory): it compares the revision it
reads with HEAD, and Alembic is imported where a schema is created, upgraded or looked up.

To change the schema: change `tables.py`, add `versions/vNNNN_<what>.py` with `revision = "NNNN"`,
`down_revision` the previous one and explicit `op` calls both ways, set HEAD to it, and name the
release it ships in below. tests/store/test_migrations.py checks that the migrations build what
`tables.py` says and that HEAD is the migrations' head; tests/store/test_v0009_sqlite_ids.py, that
SQLite's AUTOINCREMENT (which Alembic's comparison does not see) is where `tables.py` declares it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from exchange.config import NodeConfig
from exchange.errors import ConfigError, SchemaOutdated
from exchange.store.engine import make_engine, reason, shown
from exchange.store.tables import metadata

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
VERSION_TABLE = "alembic_version"
FIRST = "0001"
HEAD = "0016"  # the revision this code needs: the newest in migrations/versions

# An upgrade holds a lock from its first statement to its commit, so that two upgrades of one
# database take turns: the second waits, then finds the schema current. SQLite: the database's
# write lock (BEGIN IMMEDIATE, exchange.store.engine); PostgreSQL: this advisory lock.
LOCK_KEY = 0x6578636875706772  # "exchupgr"
LOCK_WAIT = 30.0  # seconds an upgrade waits for another's lock before it gives up, changing nothing

# The release that first shipped each revision, for messages.
RELEASES = {"0001": "0.1.0"}

# Release 0.1.0's tables and their columns, as its `metadata.create_all` made them: what a database
# without a version table must hold to be adopted as revision 0001.
RELEASE_0_1_0: dict[str, tuple[str, ...]] = {
    "bulletins": (
        "n",
        "id",
        "channel",
        "author",
        "seq",
        "state_pos",
        "tlp",
        "created",
        "stored_at",
        "envelope",
        "recipients",
        "content",
    ),
    "receipts": ("bulletin_id", "node", "status", "at", "receipt"),
    "outbox": ("n", "dest", "kind", "ref", "state", "detail", "sent_at"),
    "channel_events": ("channel", "pos", "hash", "event"),
    "user_channels": ("user", "channel"),
    "cursors": ("peer", "channel", "cursor"),
    "users": ("name", "role", "token_hash", "created"),
    "user_passwords": ("user", "hash", "set_at"),
    "console_sessions": ("id_hash", "user", "address", "created", "expires", "last_seen"),
    "signin_failures": ("n", "user", "address", "at"),
    "user_reads": ("user", "bulletin_id", "at"),
    "audit_log": ("idx", "entry", "leaf_hash"),
    "audit_checkpoints": ("size", "root", "note", "frontier", "at"),
    "audit_cosignatures": ("size", "witness", "line", "at"),
    "audit_witnessed": ("node", "size", "root", "note", "at"),
    "audit_split_views": ("n", "node", "seen", "shown", "shown_hash", "detail", "at"),
}

# Any of these in a database without a version table means exchange has written to it.
OUR_TABLES = frozenset(RELEASE_0_1_0) | frozenset(metadata.tables)

UPGRADE_HINT = "run: exchange db upgrade --node FILE"


@dataclass(frozen=True)
class State:
    """What a database holds: nothing of ours, tables without a version (release 0.1.0), or a revision."""

    kind: Literal["empty", "unversioned", "versioned"]
    revision: str | None = None


@dataclass(frozen=True)
class Upgrade:
    """What `upgrade` did: the revision found (None: empty or unversioned), whether an unversioned
    release-0.1.0 database was adopted as revision 0001, and the revisions applied, oldest first."""

    before: str | None
    after: str
    adopted: bool
    applied: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return self.adopted or bool(self.applied)


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """Alembic's configuration, built in code: the migrations ship inside this package."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    """The revision this code needs (tests hold it to the migrations' head)."""
    return HEAD


def describe(revision: str | None) -> str:
    """A revision for people: '0001 (release 0.1.0)'; None is release 0.1.0 before versioning."""
    if revision is None:
        return "0.1.0 (unversioned)"
    release = RELEASES.get(revision)
    return f"{revision} (release {release})" if release else revision


def database_name(url: str, node: str | None) -> str:
    return f"the database of node {node}" if node else f"the database {shown(url)}"


def read_state(conn: sa.Connection) -> State:
    """The database's state: one query when it has a revision (the usual case)."""
    try:
        found = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalars().all()
    except (sa.exc.OperationalError, sa.exc.ProgrammingError):
        conn.rollback()  # PostgreSQL aborts the transaction on a missing table
        names = set(sa.inspect(conn).get_table_names())
        if VERSION_TABLE in names:
            raise  # the table is there: this was another error
        found = []
    if len(found) > 1:
        raise ConfigError(f"the database has {len(found)} schema revisions ({', '.join(found)}); expected one")
    if found:
        return State("versioned", str(found[0]))
    names = set(sa.inspect(conn).get_table_names())
    return State("unversioned" if names & OUR_TABLES else "empty")


def missing_file(url: str) -> Path | None:
    """The file of a SQLite database that does not exist yet (connecting would create it); else None."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    path = Path(parsed.database)
    return None if path.exists() else path


def holds_no_node(url: str, node: str | None) -> ConfigError:
    """The refusal of a command that would otherwise create a node's database where there is none."""
    return ConfigError(
        f"{database_name(url, node)} holds no node yet ({shown(url)}): check --node, "
        "or start the node once (exchange node run), which creates it"
    )


async def require_current(engine: AsyncEngine, url: str, *, node: str | None = None, create: bool = True) -> None:
    """Return if the database is at the current revision; create the schema if it is empty (with
    `create`; else ConfigError: a mistyped node file must not make a new, empty node); else raise
    SchemaOutdated (an older revision) or ConfigError (one this code does not know)."""
    async with engine.connect() as conn:
        state = await conn.run_sync(read_state)
    if state.kind == "empty" and not create:
        raise holds_no_node(url, node)
    if state.kind == "empty":
        try:
            await upgrade(url, node=node)
        except Exception:
            # Another process may have created it meanwhile (two commands started at once).
            async with engine.connect() as conn:
                state = await conn.run_sync(read_state)
            if state.revision != head():
                raise
        return
    if state.revision == head():
        return
    whose = database_name(url, node)
    if state.kind == "unversioned":
        raise SchemaOutdated(f"{whose} is at schema {describe(None)}; {UPGRADE_HINT}")
    _known(state.revision, whose)
    raise SchemaOutdated(f"{whose} is at schema {describe(state.revision)}, not {describe(head())}; {UPGRADE_HINT}")


def is_known(revision: str) -> bool:
    """Whether this release ships `revision` (a newer release may have written one it does not)."""
    return revision in {script.revision for script in scripts().walk_revisions()}


def _known(revision: str | None, whose: str) -> None:
    if revision is not None and not is_known(revision):
        raise ConfigError(
            f"{whose} is at schema revision {revision}, which this release of exchange does not know "
            "(a newer release wrote it): run that release, or restore a backup"
        )


def check_release_0_1_0(conn: sa.Connection, whose: str = "the database") -> None:
    """Refuse, in one line, a database without a version table that is not release 0.1.0's."""
    inspector = sa.inspect(conn)
    names = set(inspector.get_table_names())
    problems: list[str] = []
    missing_tables = sorted(set(RELEASE_0_1_0) - names)
    if missing_tables:
        problems.append(f"no table {', '.join(missing_tables)}")
    for table, expected in RELEASE_0_1_0.items():
        if table in missing_tables:
            continue
        columns = {c["name"] for c in inspector.get_columns(table)}
        if missing := [c for c in expected if c not in columns]:
            problems.append(f"{table} lacks {', '.join(missing)}")
        if extra := sorted(columns - set(expected)):
            problems.append(f"{table} has unknown {', '.join(extra)}")
    if problems:
        raise ConfigError(
            f"{whose} has no schema version and is not release 0.1.0's ({'; '.join(problems)}); it was left unchanged"
        )


def _lock(conn: sa.Connection, wait: float) -> None:
    """PostgreSQL: take the upgrade's lock, waiting at most `wait` seconds (SQLite took its lock at BEGIN)."""
    if conn.dialect.name != "postgresql":
        return
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{max(1, round(wait * 1000))}ms'")
    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    conn.exec_driver_sql("SET LOCAL lock_timeout TO DEFAULT")  # the migrations' own waits are not bounded


def _lock_not_taken(exc: BaseException) -> bool:
    """Whether `exc` is the lock wait's end: SQLite's SQLITE_BUSY, PostgreSQL's lock_not_available."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlite_errorname", None) == "SQLITE_BUSY" or getattr(orig, "pgcode", None) == "55P03"


def _upgrade(conn: sa.Connection, whose: str, wait: float, empty: ConfigError | None) -> Upgrade:
    """Adopt a release-0.1.0 database if need be, then apply every later revision; one transaction.
    A database that holds none of exchange's tables is refused with `empty`, if given."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    _lock(conn, wait)
    before = MigrationContext.configure(conn).get_current_revision()
    adopted = False
    ours = set(sa.inspect(conn).get_table_names()) & OUR_TABLES
    if before is None and not ours and empty is not None:
        raise empty
    if before is None and ours:
        check_release_0_1_0(conn, whose)
        command.stamp(alembic_config(conn), FIRST)
        before, adopted = FIRST, True
    _known(before, whose)
    pending = [s.revision for s in scripts().iterate_revisions(head(), before or "base")]
    if pending:
        command.upgrade(alembic_config(conn), head())
    after = MigrationContext.configure(conn).get_current_revision()
    if after != head():  # pragma: no cover - Alembic would have raised
        raise ConfigError(f"{whose} is at schema {describe(after)} after the upgrade, not {describe(head())}")
    return Upgrade(None if adopted else before, after, adopted, tuple(reversed(pending)))


async def upgrade(url: str, *, node: str | None = None, create: bool = True) -> Upgrade:
    """Bring the database at `url` to the current revision, in one transaction; a database already
    there is left as it is. Errors come as ConfigError (SchemaOutdated never: this is the cure).
    Two upgrades of one database take turns (LOCK_KEY); one that waits LOCK_WAIT in vain gives up.
    Without `create`, a database that holds no node is refused as it is (`holds_no_node`)."""
    whose = database_name(url, node)
    empty = None if create else holds_no_node(url, node)
    if empty is not None and missing_file(url) is not None:
        raise empty  # (connecting would create the file)
    wait = LOCK_WAIT
    engine = make_engine(url, transactional_ddl=True, lock_wait=wait)
    try:
        async with engine.begin() as conn:
            return await conn.run_sync(_upgrade, whose, wait, empty)
    except (OSError, sa.exc.DBAPIError) as exc:
        if _lock_not_taken(exc):
            raise ConfigError(
                f"another upgrade (or, on SQLite, a node still running) held {whose} for {wait:g} s; nothing was "
                "changed: run `exchange db upgrade` again once it has finished"
            ) from exc
        raise ConfigError(f"the upgrade of {whose} failed and changed nothing: {reason(exc)}") from exc
    finally:
        await engine.dispose()


async def current(url: str) -> State:
    """The state of the database at `url`, without changing it (a SQLite file that is not there is
    not created: it is "empty")."""
    if missing_file(url) is not None:
        return State("empty")
    engine = make_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(read_state)
    except (OSError, sa.exc.DBAPIError) as exc:
        raise ConfigError(f"cannot read the database {shown(url)}: {reason(exc)}") from exc
    finally:
        await engine.dispose()


# -- for `exchange db` (re-exported by the composition root, exchange.app) -------------------------


async def upgrade_node(config: NodeConfig) -> list[str]:
    """`exchange db upgrade`: bring the node's database to this release's schema; what was done.
    A database that holds no node (a SQLite file not there, or a database without exchange's
    tables: another application's, say) is refused and left as it is: it upgrades a node, and a
    mistyped --node or database URL made a new one (a SQLite file with the umask's mode) or wrote
    exchange's tables into another's database (found by a read-only review). A new node's
    database gets its schema when the node first starts."""
    done = await upgrade(config.database_url, node=config.id, create=False)
    lines = []
    if done.adopted:
        lines.append(f"adopted the release 0.1.0 database as schema {describe(FIRST)}")
    lines += [f"applied {describe(revision)}" for revision in done.applied]
    if done.changed:
        lines.append(f"the database is at schema {describe(done.after)}, this release's")
    else:
        lines.append(f"the database is current (schema {describe(done.after)}); nothing to do")
    return [f"{config.id}: {line}" for line in lines]


async def node_schema(config: NodeConfig) -> str:
    """`exchange db current`: the schema of the node's database, and whether it needs an upgrade."""
    state = await current(config.database_url)
    if state.kind == "empty":
        line = f"the database is empty; the node creates schema {describe(head())} when it starts"
    elif state.revision == head():
        line = f"schema {describe(state.revision)}, current"
    elif state.revision is not None and not is_known(state.revision):
        line = f"schema {state.revision}, written by a newer release than this one"
    else:
        line = f"schema {describe(state.revision)}, this release needs {describe(head())}; {UPGRADE_HINT}"
    return f"{config.id}: {line}"
