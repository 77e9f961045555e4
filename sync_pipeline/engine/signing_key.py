"""Where the master keeps the key that signs replica manifests: out of reach of a reporting role.

PostgreSQL: a schema of its own, `<master schema>_sync_key`, owned by the role that ran `init-master`,
with every privilege revoked from PUBLIC and from any other role that holds one (also grants made by
default privileges): a role granted SELECT on all tables of the master's schema finds neither the key
nor the schema. SQLite has no roles: whoever reads the file reads every table, so the key stays in the
master file (`sync_signing_key`) and the file is created 0600 (see `master.connect_master`).
The key is never in `sync_meta`, which reporting tools may read; `init-master` moves it out of there.
"""

from __future__ import annotations

import hashlib
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine import store
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
    if conn.dialect.name != "postgresql":
        return _key_table(None)
    master_schema = conn.execute(sa.select(sa.func.current_schema())).scalar_one()
    return _key_table(key_schema_name(master_schema))


def store_signing_key(conn: Connection, master_id: str, key: str) -> None:
    """Keep `key` as the master's only signing key (inside the caller's transaction)."""
    table = _table_for(conn)
    if table.schema is not None:
        conn.execute(sa.schema.CreateSchema(table.schema, if_not_exists=True))
    table.create(conn, checkfirst=True)
    if table.schema is not None:
        _revoke_from_everyone_else(conn, table)
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


def _revoke_from_everyone_else(conn: Connection, table: sa.Table) -> None:
    """No privilege on the key's schema or table for PUBLIC or any role but the owner.

    Statements are composed by psycopg's identifier quoting: no name is pasted into SQL text.
    """
    from psycopg import sql

    assert table.schema is not None
    schema, name = sql.Identifier(table.schema), sql.Identifier(table.schema, table.name)
    grantees = conn.execute(
        sa.text(
            "SELECT DISTINCT pg_get_userbyid(a.grantee) FROM pg_namespace n, aclexplode(n.nspacl) a "
            "WHERE n.nspname = :schema AND a.grantee <> 0 AND a.grantee <> n.nspowner "
            "UNION SELECT DISTINCT pg_get_userbyid(a.grantee) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace, aclexplode(c.relacl) a "
            "WHERE n.nspname = :schema AND a.grantee <> 0 AND a.grantee <> c.relowner"
        ),
        {"schema": table.schema},
    ).scalars()
    cursor: Any = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    cursor.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM PUBLIC").format(schema))
    cursor.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM PUBLIC").format(name))
    for role in grantees:
        cursor.execute(sql.SQL("REVOKE ALL ON SCHEMA {} FROM {}").format(schema, sql.Identifier(role)))
        cursor.execute(sql.SQL("REVOKE ALL ON TABLE {} FROM {}").format(name, sql.Identifier(role)))
