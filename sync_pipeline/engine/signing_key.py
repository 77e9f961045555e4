"""Where the master keeps the key that signs replica manifests: out of reach of a reporting role.

PostgreSQL: a schema of its own, `<master schema>_sync_key`, owned by the role that ran `init-master`,
with every privilege revoked from PUBLIC and from any other role that holds one (also grants made by
default privileges): a role granted SELECT on all tables of the master's schema finds neither the key
nor the schema (`DialectImpl.signing_key_schema`, `protect_key_store`). SQLite has no roles: whoever
reads the file reads every table, so the key stays in the master file (`sync_signing_key`) and the file
is created 0600 (see `dialects/sqlite.py`).
The key is never in `sync_meta`, which reporting tools may read; `init-master` moves it out of there.
"""

from __future__ import annotations

import hashlib

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine import store
from sync_pipeline.engine.dialects import impl_for
from sync_pipeline.engine.errors import NotInitialisedError

KEY_TABLE = "sync_signing_key"
_PG_NAME_LIMIT = 63  # bytes in a PostgreSQL identifier


def key_schema_name(master_schema: str) -> str:
    """The PostgreSQL schema holding the key of the master that lives in `master_schema`."""
    name = f"{master_schema}_sync_key"
    if len(name.encode()) > _PG_NAME_LIMIT:
        name = f"sync_key_{hashlib.sha1(master_schema.encode()).hexdigest()[:20]}"
    return name


def _key_table(schema: str | None) -> sa.Table:
    return sa.Table(
        KEY_TABLE,
        sa.MetaData(),
        sa.Column("master_id", sa.String(36), primary_key=True),
        sa.Column("signing_key", sa.Text, nullable=False),
        schema=schema,
    )


def _table_for(conn: Connection) -> sa.Table:
    return _key_table(impl_for(conn).signing_key_schema(conn))


def store_signing_key(conn: Connection, master_id: str, key: str) -> None:
    """Keep `key` as the master's only signing key (inside the caller's transaction)."""
    table = _table_for(conn)
    if table.schema is not None:
        conn.execute(sa.schema.CreateSchema(table.schema, if_not_exists=True))
    table.create(conn, checkfirst=True)
    if table.schema is not None:
        impl_for(conn).protect_key_store(conn, table)
    conn.execute(sa.delete(table))
    conn.execute(sa.insert(table).values(master_id=master_id, signing_key=key))


def read_signing_key(bind: Engine | Connection, master_id: str) -> str | None:
    """The master's signing key; None when the master has none stored (not initialised by this version)."""
    with store._connection(bind) as conn:
        table = _table_for(conn)
        if not sa.inspect(conn).has_table(KEY_TABLE, schema=table.schema):
            return None
        return conn.execute(sa.select(table.c.signing_key).where(table.c.master_id == master_id)).scalar()


def require_signing_key(bind: Engine | Connection, master_id: str) -> str:
    key = read_signing_key(bind, master_id)
    if key is None:
        raise NotInitialisedError(
            "the master's signing key is missing (PostgreSQL: the schema '<master schema>_sync_key'; "
            f"SQLite: the table {KEY_TABLE})",
            "run `sync-pipeline init-master` again; if the key was lost, replicas checked out before cannot be "
            "verified and must be checked out anew",
        )
    return key


def drop_key_store(conn: Connection, master_schema: str) -> None:
    """Remove the key schema of the master in `master_schema` (PostgreSQL; tests and teardown)."""
    conn.execute(sa.schema.DropSchema(key_schema_name(master_schema), cascade=True, if_exists=True))
