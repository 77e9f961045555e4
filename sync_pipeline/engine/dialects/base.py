"""What differs between master databases, in one class per database (the layout of alembic's `ddl/`).

`DialectImpl` holds the generic behaviour: plain SQLAlchemy Core that any database with a SQLAlchemy
dialect runs (multi-row INSERT, `IN (...)` look-ups, a client-side cursor). A database module
(`sqlite.py`, `postgresql.py`, `mysql.py`) subclasses it, sets `__dialect__` to SQLAlchemy's dialect
name and overrides what its database does otherwise. The rest of the engine asks `impl_for(bind)` and
never tests a dialect's name (`sync_pipeline_tests/test_dialect_boundary.py` keeps it so).

Trigger DDL is the one place where SQL is written as text; every identifier in it is quoted by the
database's own rule (helpers in `capture.py`).

This module imports nothing of the engine at module level: `schema` and `column_types` ask the registry
while they are being imported themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql.dml import Insert

from sync_pipeline.engine.errors import BadInputError

if TYPE_CHECKING:
    from sync_pipeline.engine.column_types import DialectTypes
    from sync_pipeline.engine.schema import TableInfo
    from sync_pipeline.engine.triggers import SourceEffects

# (table, columns, referred table, referred columns): a foreign key declared on a table's partitions only.
PartitionKey = tuple[str, tuple[str, ...], str, tuple[str, ...]]
# (name, table it is declared on, BEFORE | AFTER | INSTEAD OF, events, what its source writes).
TriggerRow = tuple[str, str, str, tuple[str, ...], "SourceEffects"]

Key = tuple[Any, ...]
KeyedRows = dict[Key, dict[str, Any]]  # rows by their key (primary or natural)

BATCH = 500  # keys per look-up as one parameter each (`IN (...)`)

_REGISTRY: dict[str, type[DialectImpl]] = {}


class DialectImpl:
    """The master database's behaviour. Subclasses set `__dialect__` (SQLAlchemy's `dialect.name`) and are
    registered by it when their module is imported; `impl_for` imports the module on first use."""

    __dialect__: ClassVar[str] = "default"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__dialect__" in cls.__dict__:
            _REGISTRY[cls.__dialect__] = cls

    # ------------------------------------------------------------------------------------------
    # Connecting
    # ------------------------------------------------------------------------------------------

    def prepare_url(self, url: URL) -> URL:
        """The URL with the driver the product uses for this database (e.g. `postgresql` -> psycopg 3)."""
        return url

    def create_engine(self, url: URL, *, must_exist: bool) -> Engine:
        """An engine for the master, checked reachable (BadInputError with the server's reason if not).
        `must_exist=False` for `init-master`, which may create an embedded master's file."""
        engine = sa.create_engine(url, pool_pre_ping=True, hide_parameters=True, **self.engine_options())

        @sa.event.listens_for(engine, "connect")
        def _setup(dbapi_conn: Any, _record: Any) -> None:
            self.on_connect(dbapi_conn)

        try:
            with engine.connect():
                pass
        except OperationalError as exc:
            raise BadInputError(
                f"cannot connect to the master at {url.render_as_string(hide_password=True)}: "
                f"{str(exc.orig).strip().splitlines()[0]}",
                "check that the server runs and the URL is right",
            ) from None
        return engine

    def engine_options(self) -> dict[str, Any]:
        """Extra keyword arguments of `sa.create_engine` (connect_args, isolation level …)."""
        return {}

    def on_connect(self, dbapi_conn: Any) -> None:
        """Connect-time setup of every new driver connection (session settings, pragmas)."""

    @classmethod
    def transient_error(cls, error: BaseException) -> str | None:
        """The kind of transient abort ('deadlock' …) a driver error of this database is, for drivers
        whose errors carry no SQLSTATE (`retry.transient_kind` reads SQLSTATEs itself); None otherwise."""
        return None

    def refused_by_master(self, error: sa.exc.DBAPIError) -> bool:
        """Whether an error is the master refusing the data written (a constraint, a value out of range, a
        trigger of its own raising an error), not a failure of the database or the connection."""
        return isinstance(error, (sa.exc.IntegrityError, sa.exc.DataError))

    # ------------------------------------------------------------------------------------------
    # The master's clock and change capture (the field clock and tombstones, written by triggers)
    # ------------------------------------------------------------------------------------------

    def now(self, conn: Connection) -> str:
        """The master's clock as text in the triggers' format ('YYYY-MM-DDTHH:MM:SS.ffffff', UTC): checkout
        times are compared with the field clock's change times."""
        raise self._no_capture()

    # The module of this database's trigger DDL (`install(conn, info)`, `remove(conn, info)`); None: no capture.
    capture_module: ClassVar[ModuleType | None] = None

    def install_capture(self, conn: Connection, info: TableInfo) -> None:
        """Create (or replace) the triggers that keep `sync_field_clock` (one row per changed field, '*' for
        an inserted or deleted row) and `sync_tombstone` (the JSON image of a deleted row) for one table."""
        if self.capture_module is None:
            raise self._no_capture()
        self.capture_module.install(conn, info)

    def remove_capture(self, conn: Connection, info: TableInfo) -> None:
        """Drop the change-capture triggers of one table."""
        if self.capture_module is None:
            raise self._no_capture()
        self.capture_module.remove(conn, info)

    def capture_installed(self, conn: Connection, info: TableInfo) -> bool:
        """Whether the table's change-capture triggers exist."""
        raise self._no_capture()

    def capture_gaps(self, conn: Connection, info: TableInfo) -> list[str]:
        """Where writes into the table would escape its change capture: the table's name, or those of its
        partitions, whose triggers are missing or switched off (empty: every write is captured)."""
        return [] if self.capture_installed(conn, info) else [info.name]

    def tombstone_bytes(self, text: str) -> str:
        """A binary value of a tombstone's JSON image as plain hex (PostgreSQL's to_jsonb writes '\\x…')."""
        return text

    def _no_capture(self) -> BadInputError:
        return BadInputError(
            f"master change capture is not available for the {self.__dialect__!r} dialect",
            "use a SQLite or PostgreSQL master, or set `master_change_capture: false` in the settings",
        )

    # ------------------------------------------------------------------------------------------
    # Key look-ups and locks
    # ------------------------------------------------------------------------------------------

    def match_natural_keys(
        self, conn: Connection, info: TableInfo, columns: Sequence[str], wanted: list[Key], hits: KeyedRows
    ) -> tuple[KeyedRows, dict[Key, str]]:
        """Master rows found by natural key (`hits`, keyed by the master's values) keyed instead by the
        local values (`wanted`) the database calls equal to them, and a note for each match that is not
        the same value (a case- or accent-insensitive collation). Here: equal means the same value."""
        return hits, {}

    def lookup_batch(self, width: int = 1) -> int:
        """Keys per look-up statement for keys of `width` columns (`in_list` decides how they travel)."""
        return BATCH

    def in_list(self, column: sa.ColumnElement[Any], values: list[Any]) -> sa.ColumnElement[bool]:
        """`column IN (values)` in the form this database plans best (PostgreSQL: `= ANY(:array)`)."""
        return column.in_(values)

    def in_list_second(self, column: sa.ColumnElement[Any], values: list[Any]) -> sa.ColumnElement[bool]:
        """`column IN (values)` for the second column of a composite primary key (the field clock's and
        the tombstones' `row_key`, after `table_name`): see PostgreSQL's for why it differs from `in_list`."""
        return column.in_(values)

    def lock_rows(self, query: sa.Select[Any]) -> sa.Select[Any]:
        """The optimistic check's read with row locks (SELECT … FOR UPDATE) where the database has them."""
        return query.with_for_update()

    def lock_for_write(self, conn: Connection, touch: sa.Update) -> None:
        """Take the write lock now, before a check that must not be overtaken by another writer. Databases
        with row locks need nothing (the check's own rows are locked); SQLite runs `touch`, a no-op update,
        since its single database-wide lock is otherwise taken at the first write, after the check."""

    # ------------------------------------------------------------------------------------------
    # Generated keys and sequences
    # ------------------------------------------------------------------------------------------

    def key_is_generated(self, column: sa.Column[Any], column_type: sa.types.TypeEngine[Any]) -> bool:
        """Whether the database assigns this single integer primary key (identity, a sequence default,
        autoincrement); `column_type` is the column's type under any carrier."""
        if column.identity is not None:
            return True
        default = column.server_default
        if default is not None and "nextval" in str(getattr(default, "arg", "")):
            return True
        if "nextval" in str(domain_defaults(column_type)):  # the sequence default is the domain's own
            return True
        return column.autoincrement is True

    def find_sequences(self, bind: Engine | Connection, tables: Iterable[str]) -> dict[str, dict[str, str]]:
        """For each table, column -> the key generator that feeds it and that `advance_sequence` must move
        past explicit keys. Empty where generators follow explicit keys by themselves (SQLite's rowid,
        MySQL's AUTO_INCREMENT)."""
        return {}

    def advance_sequence(self, conn: Connection, sequence: str, highest: int, lowest: int) -> None:
        """Move a generator found by `find_sequences` past written keys (`highest` for an ascending one,
        `lowest` for a descending one), never backwards, in the load's transaction."""

    def sequence_position(self, conn: Connection, sequence: str) -> int | None:
        """The last value a generator found by `find_sequences` handed out (0 if none yet); None where it
        is not known."""
        return None

    def advance_sequence_to_max(self, conn: Connection, info: TableInfo) -> None:
        """Move the generator of the table's key past the highest key in the table (test and tool helper,
        after rows were inserted with explicit keys; the load uses `advance_sequence`)."""

    def insert_statement(self, info: TableInfo, columns: Iterable[str]) -> Insert:
        """An INSERT that accepts explicit values for every one of `columns` (also identity columns)."""
        return sa.insert(info.table)

    def insert_returning_key(self, conn: Connection, info: TableInfo, values: Mapping[str, Any]) -> tuple[Any, ...]:
        """Insert one row whose key the database assigns; its new primary key."""
        pk_columns = [info.table.columns[c] for c in info.pk]
        statement = self.insert_statement(info, values).values(dict(values)).returning(*pk_columns)
        return tuple(conn.execute(statement).one())

    # ------------------------------------------------------------------------------------------
    # The load's writes and its optimistic check (executemany here; set-based where it is faster)
    # ------------------------------------------------------------------------------------------

    def load_insert(
        self, conn: Connection, info: TableInfo, columns: Sequence[str], rows: list[dict[str, Any]]
    ) -> None:
        """Insert rows that all hold `columns` (explicit values, identities too) into a master table."""
        conn.execute(self.insert_statement(info, columns), rows)

    def load_update(
        self, conn: Connection, info: TableInfo, columns: Sequence[str], rows: list[dict[str, Any]]
    ) -> None:
        """Write `columns` into the master rows under the keys the rows hold (no row's key twice)."""
        table = info.table
        statement = (
            sa.update(table)
            .where(*[table.columns[c] == sa.bindparam(f"_key_{c}") for c in info.pk])
            .values({c: sa.bindparam(f"_new_{c}") for c in columns})
        )
        params = [{**{f"_key_{c}": r[c] for c in info.pk}, **{f"_new_{c}": r[c] for c in columns}} for r in rows]
        for start in range(0, len(params), 1000):
            conn.execute(statement, params[start : start + 1000])

    def load_delete(self, conn: Connection, info: TableInfo, keys: list[Key]) -> None:
        """Delete the master rows under `keys`."""
        table = info.table
        for start in range(0, len(keys), BATCH):
            chunk = keys[start : start + BATCH]
            if len(info.pk) == 1:
                condition = self.in_list(table.columns[info.pk[0]], [k[0] for k in chunk])
            else:
                condition = sa.tuple_(*[table.columns[c] for c in info.pk]).in_(chunk)
            conn.execute(sa.delete(table).where(condition))

    def rows_that_may_differ(
        self,
        conn: Connection,
        info: TableInfo,
        columns: Sequence[str],
        expected: list[dict[str, Any]],
        lock: bool = True,
    ) -> set[int] | None:
        """A first pass of the optimistic check and of the load's verification: lock (if `lock`) the master
        rows under the keys of `expected` (rows detection saw, or the load wrote) and return the positions
        of those that may differ in `columns` or be gone, a superset of what the Python comparison refuses.
        None: no such pass here, Python compares every row."""
        return None

    # ------------------------------------------------------------------------------------------
    # Bulk writes of the sync tables
    # ------------------------------------------------------------------------------------------

    def bulk_insert(
        self, conn: Connection, table: sa.Table, columns: Sequence[str], rows: list[dict[str, Any]]
    ) -> None:
        """Insert rows (all holding `columns`) into one of the engine's own sync tables, the fastest way the
        database has (COPY on PostgreSQL; a multi-row INSERT through executemany elsewhere)."""
        conn.execute(sa.insert(table), rows)

    # ------------------------------------------------------------------------------------------
    # Checkout: one consistent snapshot, streamed
    # ------------------------------------------------------------------------------------------

    def snapshot(self, conn: Connection) -> Connection:
        """`conn` set up so that one transaction on it sees one snapshot of every table (parents and
        children agree); call before `begin()`."""
        return conn

    def stream_rows(self, conn: Connection, query: sa.Select[Any], chunk_rows: int) -> Iterator[list[tuple[Any, ...]]]:
        """Rows of a Core query in chunks of `chunk_rows`, straight from the driver (no per-row processing
        by SQLAlchemy); a server-side cursor where the database has one, so memory stays constant."""
        compiled = query.compile(dialect=conn.dialect)
        dbapi = conn.connection.dbapi_connection
        assert dbapi is not None
        cursor = self.streaming_cursor(dbapi, chunk_rows)
        if compiled.positional:
            cursor.execute(str(compiled), [compiled.params[name] for name in compiled.positiontup or []])
        else:
            cursor.execute(str(compiled), compiled.params)
        try:
            while chunk := cursor.fetchmany(chunk_rows):
                yield chunk
        finally:
            cursor.close()

    def streaming_cursor(self, dbapi_conn: Any, chunk_rows: int) -> Any:
        """The driver cursor `stream_rows` reads through (PostgreSQL: a named, server-side one)."""
        return dbapi_conn.cursor()

    # ------------------------------------------------------------------------------------------
    # Reflection: column types, partitions, the master's own triggers
    # ------------------------------------------------------------------------------------------

    @property
    def types(self) -> DialectTypes:
        """The column-type rules (`column_types.Carrier` per column) of this database."""
        from sync_pipeline.engine.column_types import DialectTypes

        return DialectTypes()

    def partition_foreign_keys(self, bind: Engine | Connection, tables: Iterable[str]) -> list[PartitionKey]:
        """Foreign keys of the named tables declared on their partitions only (reflection misses them)."""
        return []

    def master_triggers(self, bind: Engine | Connection) -> list[TriggerRow]:
        """Every user trigger of the master with what its source writes (`triggers.read_source`). Empty
        where the database's triggers cannot be listed: no column then counts as trigger-maintained."""
        return []

    def name_key(self, name: str) -> str:
        """A table name as the database compares it, to match names read from trigger source with the
        reflected ones (PostgreSQL: exactly, as catalogs hold folded names; SQLite: ignoring case)."""
        return name

    # ------------------------------------------------------------------------------------------
    # The signing key's store
    # ------------------------------------------------------------------------------------------

    def signing_key_schema(self, conn: Connection) -> str | None:
        """The schema holding the manifest signing key, out of reach of roles that read the master's
        tables; None: the key table sits beside the master's tables (databases without roles)."""
        return None

    def protect_key_store(self, conn: Connection, table: sa.Table) -> None:
        """Revoke every privilege on the key's schema and table from anyone but the owner."""


def domain_defaults(column_type: sa.types.TypeEngine[Any]) -> list[str]:
    """The defaults of the (nested) domains a column's type is made of."""
    defaults: list[str] = []
    for _ in range(32):
        if not hasattr(column_type, "data_type"):
            break
        if getattr(column_type, "default", None) is not None:
            defaults.append(str(column_type.default))
        column_type = column_type.data_type
    return defaults


@contextmanager
def catalog_connection(bind: Engine | Connection) -> Iterator[Connection]:
    """A connection for catalog reads: the caller's, or a short one of the engine's."""
    if isinstance(bind, Connection):
        yield bind
        return
    with bind.connect() as conn:
        yield conn


__all__ = ["BATCH", "DialectImpl", "PartitionKey", "TriggerRow", "catalog_connection", "domain_defaults"]
