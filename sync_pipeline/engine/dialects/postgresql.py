"""PostgreSQL as the master: psycopg 3, row locks, sequences and identities, COPY, server-side cursors,
partitions, roles (the signing key in a schema of its own).

Change capture is one PL/pgSQL function and statement-level triggers with transition tables per table
(`postgresql_capture.py`); catalog queries are in `postgresql_catalog.py`, column-type rules in
`postgresql_types.py`.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY, REGCLASS
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.dml import Insert

from sync_pipeline.engine.column_types import DialectTypes
from sync_pipeline.engine.dialects import postgresql_capture as capture
from sync_pipeline.engine.dialects import postgresql_catalog as catalog
from sync_pipeline.engine.dialects import postgresql_staging as staging
from sync_pipeline.engine.dialects.base import DialectImpl, Key, PartitionKey, TriggerRow
from sync_pipeline.engine.dialects.capture import quote_identifier
from sync_pipeline.engine.dialects.postgresql_types import PostgreSQLTypes
from sync_pipeline.engine.schema import TableInfo

ARRAY_BATCH = 5000  # keys per look-up when they travel as one array parameter
# Column types whose values PostgreSQL takes as a typed array parameter without surprises.
_ARRAY_SAFE = (sa.Integer, sa.String, sa.Uuid, sa.Date, sa.DateTime, sa.Numeric)


class PostgreSQLImpl(DialectImpl):
    __dialect__ = "postgresql"
    capture_module = capture

    def prepare_url(self, url: URL) -> URL:
        if url.drivername in ("postgresql", "postgres"):
            return url.set(drivername="postgresql+psycopg")
        return url

    # -- clock and change capture -----------------------------------------------------------------

    def refused_by_master(self, error: sa.exc.DBAPIError) -> bool:
        # A trigger of the master's own that raises (RAISE EXCEPTION: SQLSTATE P0001) refuses the data too.
        return super().refused_by_master(error) or getattr(error.orig, "sqlstate", None) == "P0001"

    def now(self, conn: Connection) -> str:
        utc = sa.func.timezone("UTC", sa.func.clock_timestamp())
        return conn.execute(sa.select(sa.func.to_char(utc, 'YYYY-MM-DD"T"HH24:MI:SS.US'))).scalar_one()

    def capture_installed(self, conn: Connection, info: TableInfo) -> bool:
        names = capture.trigger_names(info)
        found = conn.execute(
            sa.text("SELECT count(*) FROM pg_trigger WHERE tgname = ANY(:n) AND tgrelid = CAST(:t AS regclass)"),
            {"n": names, "t": quote_identifier(info.name)},
        ).scalar_one()
        return found == len(names)

    def capture_gaps(self, conn: Connection, info: TableInfo) -> list[str]:
        return capture.gaps(conn, info)

    def tombstone_bytes(self, text: str) -> str:
        return text.removeprefix("\\x")  # to_jsonb writes bytea as '\x…' hex

    # -- key look-ups -----------------------------------------------------------------------------

    def lookup_batch(self, width: int = 1) -> int:
        return ARRAY_BATCH if width == 1 else super().lookup_batch(width)

    def in_list(self, column: sa.ColumnElement[Any], values: list[Any]) -> sa.ColumnElement[bool]:
        """`column = ANY(:array)`: one typed parameter instead of one per value, which spares the driver
        parsing and the server planning a statement hundreds of parameters long for every batch of keys."""
        if isinstance(column.type, _ARRAY_SAFE) and not isinstance(column.type, sa.Enum):
            return column == sa.any_(sa.bindparam(None, values, type_=ARRAY(column.type)))
        return column.in_(values)

    def in_list_second(self, column: sa.ColumnElement[Any], values: list[Any]) -> sa.ColumnElement[bool]:
        """`column IN (SELECT unnest(:array))`: a look-up per key in the index, whatever plan the server
        keeps. `= ANY(:array)` there lets the plan scan the index by its first column alone (every clock
        row of the table) and compare each row with every key; PostgreSQL hashes the array only in a plan
        made for the array's value, not in the generic plan it switches to once psycopg prepares the
        statement (its sixth batch on): 1.2 s per batch of 5,000 keys against 10,000 clock rows."""
        array = sa.bindparam(None, values, type_=ARRAY(column.type))
        return column.in_(sa.select(sa.func.unnest(array)))

    # -- generated keys and sequences -------------------------------------------------------------

    def find_sequences(self, bind: Engine | Connection, tables: Iterable[str]) -> dict[str, dict[str, str]]:
        return catalog.find_sequences(bind, tables)

    def advance_sequence(self, conn: Connection, sequence: str, highest: int, lowest: int) -> None:
        catalog.advance_sequence(conn, sequence, highest, lowest)

    def sequence_position(self, conn: Connection, sequence: str) -> int | None:
        last = sa.func.pg_sequence_last_value(sa.cast(sequence, REGCLASS))
        return int(conn.execute(sa.select(sa.func.coalesce(last, 0))).scalar_one())

    def advance_sequence_to_max(self, conn: Connection, info: TableInfo) -> None:
        column = info.table.columns[info.pk[0]]
        sequence = conn.execute(
            sa.select(sa.func.pg_get_serial_sequence(conn.dialect.identifier_preparer.quote(info.name), column.name))
        ).scalar()
        if not sequence:
            return
        highest = sa.select(sa.func.max(column)).scalar_subquery()
        last = sa.func.coalesce(sa.func.pg_sequence_last_value(sa.cast(sequence, REGCLASS)), 0)
        conn.execute(sa.select(sa.func.setval(sequence, sa.func.greatest(highest, last, 1))))

    def insert_statement(self, info: TableInfo, columns: Iterable[str]) -> Insert:
        if info.identity_always & set(columns):
            return _OverridingInsert(info.table)
        return sa.insert(info.table)

    # -- the load: set-based writes and check (postgresql_staging) ---------------------------------

    def load_insert(
        self, conn: Connection, info: TableInfo, columns: Sequence[str], rows: list[dict[str, Any]]
    ) -> None:
        if not staging.stageable(info, columns):
            return super().load_insert(conn, info, columns, rows)
        staging.insert_rows(conn, info, columns, rows, self.insert_statement(info, columns))

    def load_update(
        self, conn: Connection, info: TableInfo, columns: Sequence[str], rows: list[dict[str, Any]]
    ) -> None:
        keys = {tuple(row[c] for c in info.pk) for row in rows}
        if len(keys) < len(rows) or not staging.stageable(info, [*info.pk, *columns]):
            # A key twice: UPDATE … FROM would write one of its rows, executemany writes them in order.
            return super().load_update(conn, info, columns, rows)
        staging.update_rows(conn, info, columns, rows)

    def load_delete(self, conn: Connection, info: TableInfo, keys: list[Key]) -> None:
        if not staging.stageable(info, info.pk):
            return super().load_delete(conn, info, keys)
        staging.delete_rows(conn, info, keys)

    def rows_that_may_differ(
        self,
        conn: Connection,
        info: TableInfo,
        columns: Sequence[str],
        expected: list[dict[str, Any]],
        lock: bool = True,
    ) -> set[int] | None:
        if not staging.stageable(info, columns):
            return None
        return staging.rows_that_differ(conn, info, columns, expected, lock)

    # -- bulk writes of the sync tables -----------------------------------------------------------

    def bulk_insert(
        self, conn: Connection, table: sa.Table, columns: Sequence[str], rows: list[dict[str, Any]]
    ) -> None:
        """COPY, several times faster than executemany for the tens of thousands of change and history rows
        a large session writes. The statement names only our own sync table and its columns, composed by
        psycopg's identifier quoting: no outside name or value is pasted into it."""
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        with cursor.copy(_copy_statement(table, list(columns))) as writer:
            for row in rows:
                writer.write_row([row[c] for c in columns])

    # -- checkout ---------------------------------------------------------------------------------

    def snapshot(self, conn: Connection) -> Connection:
        return conn.execution_options(isolation_level="REPEATABLE READ")

    def streaming_cursor(self, dbapi_conn: Any, chunk_rows: int) -> Any:
        cursor = dbapi_conn.cursor(name=f"sync_checkout_{uuid.uuid4().hex}")  # server-side: constant memory
        cursor.itersize = chunk_rows
        return cursor

    # -- reflection -------------------------------------------------------------------------------

    @property
    def types(self) -> DialectTypes:
        return _TYPES

    def partition_foreign_keys(self, bind: Engine | Connection, tables: Iterable[str]) -> list[PartitionKey]:
        return catalog.partition_foreign_keys(bind, tables)

    def master_triggers(self, bind: Engine | Connection) -> list[TriggerRow]:
        return catalog.master_triggers(bind)

    # -- the signing key's store ------------------------------------------------------------------

    def signing_key_schema(self, conn: Connection) -> str | None:
        from sync_pipeline.engine.signing_key import key_schema_name

        return key_schema_name(conn.execute(sa.select(sa.func.current_schema())).scalar_one())

    def protect_key_store(self, conn: Connection, table: sa.Table) -> None:
        """Statements are composed by psycopg's identifier quoting: no name is pasted into SQL text."""
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


def _copy_statement(table: sa.Table, columns: list[str]) -> Any:
    from psycopg import sql

    if not set(columns) <= set(table.columns.keys()):
        raise ValueError(f"COPY is only for the sync tables' own columns, not {table.name}({columns})")
    return sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table.name), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )


class _OverridingInsert(Insert):
    """INSERT … OVERRIDING SYSTEM VALUE: explicit values into GENERATED ALWAYS identities."""

    inherit_cache = True


@compiles(_OverridingInsert, PostgreSQLImpl.__dialect__)
def _compile_overriding(element: _OverridingInsert, compiler: Any, **kw: Any) -> str:
    text: str = compiler.visit_insert(element, **kw)
    return text[: (end := _column_list_end(text))] + " OVERRIDING SYSTEM VALUE" + text[end:]


def _column_list_end(sql: str) -> int:
    """The position after `INSERT INTO name (columns)`, skipping quoted identifiers."""
    i, depth, quoted = 0, 0, False
    while i < len(sql):
        char = sql[i]
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("an INSERT without a column list")


_TYPES = PostgreSQLTypes()
