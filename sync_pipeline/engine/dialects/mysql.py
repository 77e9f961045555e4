"""MariaDB and MySQL as the master (SQLAlchemy's `mariadb` and `mysql` dialects, driver mysqlclient).

What differs from PostgreSQL, and how it is handled here:
- one trigger per event and no transition tables: change capture is three row triggers per table
  (AFTER INSERT / UPDATE / DELETE), each a single statement or a BEGIN … END block;
- identifiers in trigger DDL are quoted with backticks (`mysql_capture.py`);
- DDL commits implicitly, so every step of `init-master` is idempotent (CREATE OR REPLACE TRIGGER,
  CREATE TABLE IF NOT EXISTS through `create_all`): a run that failed half-way is simply run again;
- AUTO_INCREMENT moves past explicit keys by itself (nothing to advance);
- every session is strict (`STRICT_ALL_TABLES`, zero dates refused) and in UTC, with `||` as
  concatenation (the engine's `key_text` uses it), and READ COMMITTED like PostgreSQL's default; the
  checkout's snapshot is REPEATABLE READ (one read view for every table).
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import Cast

from sync_pipeline.engine.column_types import DialectTypes
from sync_pipeline.engine.dialects import mysql_capture, mysql_collation, mysql_staging
from sync_pipeline.engine.dialects.base import DialectImpl, Key, KeyedRows, TriggerRow, catalog_connection
from sync_pipeline.engine.dialects.mysql_types import MySQLTypes
from sync_pipeline.engine.errors import BadInputError
from sync_pipeline.engine.schema import TableInfo
from sync_pipeline.engine.triggers import read_source, without_comments_and_strings

# Every session: strict (a value that does not fit is an error, zero dates refused), `||` as concatenation
# (the engine's key_text uses it), and UTC (TIMESTAMP columns read and written as UTC).
SESSION_SETUP = (
    "SET SESSION sql_mode = CONCAT(@@sql_mode, "
    "',STRICT_ALL_TABLES,NO_ZERO_DATE,NO_ZERO_IN_DATE,ERROR_FOR_DIVISION_BY_ZERO,PIPES_AS_CONCAT'), "
    "time_zone = '+00:00'"
)
# Driver error numbers of aborts caused by other transactions (retried like PostgreSQL's 40P01/40001).
TRANSIENT_ERRORS = {1213: "deadlock", 1205: "lock_wait_timeout"}
REFUSALS = {4025, 3819, 1644}  # CHECK constraint failed (MariaDB, MySQL), SIGNAL in a trigger


class MySQLImpl(DialectImpl):
    __dialect__ = "mysql"
    capture_module = mysql_capture

    # -- connecting --------------------------------------------------------------------------------

    def prepare_url(self, url: URL) -> URL:
        if url.drivername in ("mysql", "mariadb"):
            url = url.set(drivername=f"{url.drivername}+mysqldb")
        if "charset" not in url.query:
            url = url.update_query_dict({"charset": "utf8mb4"})  # 4-byte characters (emoji, CJK ext.)
        if url.drivername.endswith("+mysqldb") and importlib.util.find_spec("MySQLdb") is None:
            # mysqlclient is an extra: it compiles against MariaDB's client headers, which an SQLite or
            # PostgreSQL user should not need.
            raise BadInputError(
                "the MariaDB/MySQL driver (mysqlclient) is not installed",
                "install it with: pip install 'sync_pipeline[mariadb]' "
                "(on Debian/Ubuntu first: apt-get install libmariadb-dev pkg-config gcc)",
            )
        return url

    @classmethod
    def transient_error(cls, error: BaseException) -> str | None:
        # mysqlclient's errors are (error number, message), without SQLSTATE.
        code = error.args[0] if error.args else None
        return TRANSIENT_ERRORS.get(code) if isinstance(code, int) else None

    def refused_by_master(self, error: sa.exc.DBAPIError) -> bool:
        # MariaDB reports a failed CHECK constraint (4025; MySQL 3819) and a trigger's SIGNAL (1644) as
        # operational errors, not integrity errors.
        code = error.orig.args[0] if error.orig is not None and error.orig.args else None
        return super().refused_by_master(error) or code in REFUSALS

    def engine_options(self) -> dict[str, Any]:
        return {"isolation_level": "READ COMMITTED"}

    def on_connect(self, dbapi_conn: Any) -> None:
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(SESSION_SETUP)
        finally:
            cursor.close()

    # -- clock and change capture -----------------------------------------------------------------

    def now(self, conn: Connection) -> str:
        return conn.execute(
            sa.select(sa.func.date_format(sa.func.utc_timestamp(6), "%Y-%m-%dT%H:%i:%s.%f"))
        ).scalar_one()

    def capture_installed(self, conn: Connection, info: TableInfo) -> bool:
        found = conn.execute(
            sa.text(
                "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS "
                "WHERE TRIGGER_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = :t"
            ),
            {"t": info.name},
        ).scalars()
        return set(mysql_capture.trigger_names(info)) <= set(found)

    def tombstone_bytes(self, text: str) -> str:
        return text  # HEX() in the row image: plain hex already

    # -- keys -------------------------------------------------------------------------------------

    def insert_returning_key(self, conn: Connection, info: TableInfo, values: Any) -> tuple[Any, ...]:
        # MySQL has no INSERT … RETURNING (MariaDB from 10.5 only): the driver's last insert id.
        result = conn.execute(self.insert_statement(info, values).values(dict(values)))
        return tuple(result.inserted_primary_key)

    def load_update(
        self, conn: Connection, info: TableInfo, columns: Sequence[str], rows: list[dict[str, Any]]
    ) -> None:
        """One multi-table UPDATE from a staging table (`mysql_staging`) instead of a round trip per row."""
        if len({tuple(row[c] for c in info.pk) for row in rows}) < len(rows):
            return super().load_update(conn, info, columns, rows)  # a key twice: written in order
        mysql_staging.update_rows(conn, info, columns, rows)

    def match_natural_keys(self, conn: Connection, info: TableInfo, *args: Any) -> tuple[KeyedRows, dict[Key, str]]:
        return mysql_collation.match_natural_keys(conn, info, *args)  # (columns, wanted, hits)

    # -- checkout ---------------------------------------------------------------------------------

    def snapshot(self, conn: Connection) -> Connection:
        # REPEATABLE READ: the transaction's first read opens one read view that every later read uses.
        return conn.execution_options(isolation_level="REPEATABLE READ")

    def streaming_cursor(self, dbapi_conn: Any, chunk_rows: int) -> Any:
        """An unbuffered (server-side) cursor: rows come as the server sends them, memory stays constant."""
        from MySQLdb.cursors import SSCursor

        return dbapi_conn.cursor(SSCursor)

    # -- reflection -------------------------------------------------------------------------------

    @property
    def types(self) -> DialectTypes:
        return _TYPES

    def master_triggers(self, bind: Engine | Connection) -> list[TriggerRow]:
        query = sa.text(
            "SELECT TRIGGER_NAME, EVENT_OBJECT_TABLE, ACTION_TIMING, EVENT_MANIPULATION, ACTION_STATEMENT "
            "FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = DATABASE() ORDER BY 2, 1"
        )
        with catalog_connection(bind) as conn:
            rows = conn.execute(query).all()
        found: list[TriggerRow] = []
        for name, table, timing, event, statement in rows:
            # MySQL assigns with `SET NEW.x = …`: read as the assignment form read_source knows.
            text = _SET_NEW.sub("; NEW.", without_comments_and_strings(statement or ""))
            effects = read_source(text, fold=False)
            found.append((name, table, timing.upper(), (event.upper(),), effects))
        return found


@compiles(Cast, "mysql")
@compiles(Cast, "mariadb")
def _cast_to_text(cast: Cast[Any], compiler: SQLCompiler, **kw: Any) -> str:
    """`CAST(x AS TEXT)` (the engine's text of a value: keys as the triggers render them, text-carried
    columns) is `CAST(x AS CHAR CHARACTER SET utf8mb4)` here; SQLAlchemy's MySQL compiler would drop the
    CAST altogether, leaving a number or a date where text is expected. Other casts are its own."""
    if isinstance(cast.type, sa.String) and not isinstance(cast.type, sa.Enum):
        return f"CAST({compiler.process(cast.clause, **kw)} AS CHAR CHARACTER SET utf8mb4)"
    return compiler.visit_cast(cast, **kw)


@sa.event.listens_for(sa.Table, "column_reflect")
def _unescape_backticks(inspector: Any, table: sa.Table, column_info: dict[str, Any]) -> None:
    """SQLAlchemy reads MySQL's SHOW CREATE TABLE without undoing the doubled backtick of a quoted name
    (a column named `` `tick` `` comes back as ``` ``tick`` ```): undo it, or every statement names a
    column that does not exist."""
    if inspector.dialect.name in ("mysql", "mariadb") and "``" in column_info["name"]:
        column_info["name"] = column_info["name"].replace("``", "`")


_SET_NEW = re.compile(r"\bSET\s+(?=NEW\s*\.)", re.IGNORECASE)


_TYPES = MySQLTypes()


class MariaDBImpl(MySQLImpl):
    """`mariadb://` URLs: SQLAlchemy names the dialect `mariadb`; the behaviour is the same."""

    __dialect__ = "mariadb"
