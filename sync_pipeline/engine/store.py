"""The master's sync tables: durable state of replicas, sessions, changes, conflicts, decisions and
applied history. A session that waits days for a decision, or whose run crashed, resumes from here.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import uuid
from collections.abc import Callable, Iterable, Sized
from itertools import islice
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine.dialects import exact_key_text, impl_for
from sync_pipeline.engine.errors import NotInitialisedError

metadata = sa.MetaData()


sync_meta = sa.Table(
    "sync_meta",
    metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

sync_replica = sa.Table(
    "sync_replica",
    metadata,
    sa.Column("replica_id", sa.String(36), primary_key=True),
    sa.Column("owner", sa.String(200), nullable=False),
    sa.Column("modules", sa.Text, nullable=False),  # JSON list
    sa.Column("checked_out_at", sa.String(32), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),  # offline|syncing|waiting|retired|failed
    sa.Column("path", sa.Text),
    sa.Column("settings", sa.Text, nullable=False),  # YAML frozen at checkout
    sa.Column("schema_hash", sa.String(64), nullable=False),
    sa.Column("retired_at", sa.String(32)),
    # When the replica *file* was retired after the load: from then on the master refuses the replica
    # whatever its file says (a copy kept from before, a manifest status edited back to "open").
    sa.Column("file_retired_at", sa.String(32)),
    # The Dagster partition key a person recognises (owner + short id), set by the Dagster shell.
    sa.Column("partition_key", sa.String(80), unique=True),
)

sync_session = sa.Table(
    "sync_session",
    metadata,
    sa.Column("session_id", sa.String(36), primary_key=True),
    sa.Column("replica_id", sa.String(36), sa.ForeignKey("sync_replica.replica_id"), nullable=False, index=True),
    # extracted|detected|waiting|ready|done|failed
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("started_at", sa.String(32), nullable=False),
    sa.Column("finished_at", sa.String(32)),
    sa.Column("decision_version", sa.Integer, nullable=False, server_default="0"),
    sa.Column("dagster_run_id", sa.String(64)),
    sa.Column("summary", sa.Text),  # JSON: counts per module and kind
    sa.Column("error", sa.Text),
    # The load (session:decision version#attempt) that one launcher claimed: CLI and sensor never both run it.
    sa.Column("apply_claim", sa.String(100)),
)

sync_change = sa.Table(
    "sync_change",
    metadata,
    sa.Column("session_id", sa.String(36), sa.ForeignKey("sync_session.session_id"), primary_key=True),
    sa.Column("change_id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("module", sa.String(200), nullable=False),
    sa.Column("table_name", sa.String(200), nullable=False),
    sa.Column("row_key", sa.Text, nullable=False),  # JSON object column -> value
    sa.Column("op", sa.String(8), nullable=False),  # insert|update|delete
    sa.Column("base", sa.Text),
    sa.Column("local", sa.Text),
    sa.Column("changed", sa.Text, nullable=False),  # JSON list of field names
    sa.Column("local_times", sa.Text, nullable=False),  # JSON field -> ISO time
    # What detection saw, so that the load can check the master did not move since.
    sa.Column("action", sa.String(12)),  # apply|skip|conflict|remap|duplicate
    sa.Column("master", sa.Text),
    sa.Column("master_times", sa.Text),
    sa.Column("apply_fields", sa.Text),
    sa.Column("target_key", sa.Text),
    sa.Column("note", sa.Text),
)

sync_conflict = sa.Table(
    "sync_conflict",
    metadata,
    sa.Column("conflict_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(36), sa.ForeignKey("sync_session.session_id"), nullable=False, index=True),
    sa.Column("change_id", sa.Integer, nullable=False),
    sa.Column("module", sa.String(200), nullable=False),
    sa.Column("table_name", sa.String(200), nullable=False),
    sa.Column("row_key", sa.Text, nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("fields", sa.Text, nullable=False),  # JSON list of {name, base, local, master}
    sa.Column("policy", sa.String(16), nullable=False),
    sa.Column("status", sa.String(12), nullable=False),  # pending|decided
    sa.Column("detail", sa.Text),  # JSON: orphan parent, duplicate target
    sa.Column("created_at", sa.String(32), nullable=False),
)

sync_decision = sa.Table(
    "sync_decision",
    metadata,
    sa.Column("decision_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("conflict_id", sa.Integer, sa.ForeignKey("sync_conflict.conflict_id"), nullable=False, index=True),
    sa.Column("field", sa.String(200)),  # NULL: the whole row
    sa.Column("choice", sa.String(8), nullable=False),  # local|master|value
    sa.Column("value", sa.Text),  # JSON, for choice=value
    sa.Column("rule", sa.String(16), nullable=False),  # the policy, or 'person'
    sa.Column("decided_by", sa.String(200)),
    sa.Column("decided_at", sa.String(32), nullable=False),
)

sync_applied = sa.Table(
    "sync_applied",
    metadata,
    sa.Column("applied_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("session_id", sa.String(36), sa.ForeignKey("sync_session.session_id"), nullable=False, index=True),
    sa.Column("change_id", sa.Integer),  # the change (and so the conflict) this write comes from
    sa.Column("table_name", sa.String(200), nullable=False),
    sa.Column("row_key", sa.Text, nullable=False),
    sa.Column("op", sa.String(8), nullable=False),
    sa.Column("before", sa.Text),
    sa.Column("after", sa.Text),
    sa.Column("source", sa.String(32), nullable=False),  # change|decision|remap|duplicate
    sa.Column("applied_at", sa.String(32), nullable=False),
)

# Written by the master's change-capture triggers: the last time each field of each row changed.
sync_field_clock = sa.Table(
    "sync_field_clock",
    metadata,
    sa.Column("table_name", exact_key_text(sa.String(200), 64), primary_key=True),
    sa.Column("row_key", exact_key_text(sa.Text(), 600), primary_key=True),
    sa.Column("column_name", exact_key_text(sa.String(200), 64), primary_key=True),  # '*': row inserted or deleted
    sa.Column("changed_at", sa.String(32), nullable=False),
)

# The review page's login sessions (engine/web_sessions.py): the cookie carries a random id, the master
# keeps only its SHA-256, so a reader of the master cannot take over a login.
sync_web_session = sa.Table(
    "sync_web_session",
    metadata,
    sa.Column("id_hash", sa.String(64), primary_key=True),
    sa.Column("account", sa.String(200), nullable=False, index=True),
    sa.Column("password_fingerprint", sa.String(64), nullable=False),
    sa.Column("created_at", sa.String(32), nullable=False),
    sa.Column("seen_at", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.String(32), nullable=False),  # the absolute end, however active
)

# Written by the master's change-capture triggers: the image of each row the master deletes (every
# column, as JSON), when and, where the database knows it, by whom. An orphan decided 'local' re-creates
# its parent from here (engine/tombstones.py); retention purges images older than its window.
sync_tombstone = sa.Table(
    "sync_tombstone",
    metadata,
    sa.Column("table_name", exact_key_text(sa.String(200), 64), primary_key=True),
    sa.Column("row_key", exact_key_text(sa.Text(), 600), primary_key=True),  # rendered as the field clock renders it
    sa.Column("deleted_at", sa.String(32), primary_key=True),
    sa.Column("row_image", sa.Text, nullable=False),  # JSON object: column -> value
    sa.Column("deleted_by", sa.Text),  # JSON (PostgreSQL: current_user, session_user, application_name)
)

SYNC_TABLES = frozenset(metadata.tables) | {"sync_signing_key"}  # the key's table: engine/signing_key.py


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def new_id() -> str:
    return str(uuid.uuid4())


def create_sync_tables(conn: Connection) -> None:
    metadata.create_all(conn)
    _add_missing_columns(conn)


def _add_missing_columns(conn: Connection) -> None:
    """A master initialised by an older version gets the nullable columns added since (init-master again)."""
    from alembic.migration import MigrationContext
    from alembic.operations import Operations

    inspector = sa.inspect(conn)
    operations = None
    for table in metadata.sorted_tables:
        existing = {c["name"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name not in existing and column.nullable:
                operations = operations or Operations(MigrationContext.configure(conn))
                operations.add_column(table.name, sa.Column(column.name, column.type, nullable=True))


def read_meta(bind: Engine | Connection) -> dict[str, str]:
    if not sa.inspect(bind).has_table("sync_meta"):
        raise NotInitialisedError(
            "the master has no sync tables",
            "run `sync-pipeline init-master --master URL --settings FILE` first",
        )
    _refuse_outdated_tables(bind)
    with _connection(bind) as conn:
        return {row.key: row.value for row in conn.execute(sa.select(sync_meta))}


def _refuse_outdated_tables(bind: Engine | Connection) -> None:
    """Sync tables of an older version lack columns this one reads: say how to upgrade them, not an SQL error."""
    inspector = sa.inspect(bind)
    present = set(inspector.get_table_names())
    names = [t.name for t in metadata.sorted_tables if t.name in present]
    found = inspector.get_multi_columns(filter_names=names)
    existing = {table: {c["name"] for c in columns} for (_schema, table), columns in found.items()}
    # The review page's login table is created at the first login (engine/web_sessions.py).
    absent = [t.name for t in metadata.sorted_tables if t.name not in present and t is not sync_web_session]
    missing = absent + [
        f"{t.name}.{c.name}"
        for t in metadata.sorted_tables
        if t.name in existing
        for c in t.columns
        if c.name not in existing[t.name]
    ]
    if missing:
        raise NotInitialisedError(
            f"the master's sync tables are from an older version of sync_pipeline (missing {', '.join(missing[:5])})",
            "run `sync-pipeline init-master --master URL --settings FILE` once to upgrade them; nothing is lost",
        )


def write_meta(conn: Connection, values: dict[str, str]) -> None:
    for key, value in values.items():
        updated = conn.execute(sa.update(sync_meta).where(sync_meta.c.key == key).values(value=value))
        if updated.rowcount == 0:
            conn.execute(sa.insert(sync_meta).values(key=key, value=value))


def new_signing_key() -> str:
    return secrets.token_hex(32)


class _connection:
    """Use a Connection as it is, or open one from an Engine for the duration of a block."""

    def __init__(self, bind: Engine | Connection) -> None:
        self.bind = bind
        self.conn: Connection | None = None

    def __enter__(self) -> Connection:
        if isinstance(self.bind, Connection):
            return self.bind
        self.conn = self.bind.connect()
        return self.conn

    def __exit__(self, *exc: Any) -> None:
        if self.conn is not None:
            self.conn.close()


BULK_CHUNK = 2000


def insert_rows(
    conn: Connection,
    table: sa.Table,
    rows: Iterable[dict[str, Any]],
    on_chunk: Callable[[int, int], None] | None = None,
    total: int | None = None,
) -> None:
    """Insert many rows into one of the sync tables, in chunks; `on_chunk(done, total)` after each.

    The database's fastest bulk insert (`DialectImpl.bulk_insert`: COPY on PostgreSQL), several times
    faster than executemany for the tens of thousands of change and history rows a large session writes.
    `rows` may be a generator (with `total` for the progress): only one chunk of it is held at a time.
    """
    if table.name not in SYNC_TABLES:
        raise ValueError(f"bulk inserts are only for the sync tables, not {table.name}")
    if total is None:
        total = len(rows) if isinstance(rows, Sized) else 0
    impl = impl_for(conn)
    iterator = iter(rows)
    done = 0
    while chunk := list(islice(iterator, BULK_CHUNK)):
        impl.bulk_insert(conn, table, list(chunk[0]), chunk)
        done += len(chunk)
        if on_chunk is not None:
            on_chunk(done, max(total, done))


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)
