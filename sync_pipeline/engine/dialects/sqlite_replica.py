"""The replica's change log and freeze: SQLite triggers on every replica table (the replica is always
SQLite, whatever the master's database).

The change log `_sync_log` holds one row per insert, update and delete with the row's old and new values
as JSON; a frozen replica refuses every write with a message naming the sync that holds it.
"""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync_pipeline.engine.column_types import carrier_of
from sync_pipeline.engine.dialects.capture import quote_identifier, sql_string, trigger_name
from sync_pipeline.engine.schema import TableInfo

NOW = "strftime('%Y-%m-%dT%H:%M:%f', 'now')"
LOG_TABLE = "_sync_log"
JSON_ARGS_PER_CALL = 60  # SQLite limits a function to 127 arguments (2 per column)

AnyConnection = Connection | sqlite3.Connection

FROZEN_OPS = ("INSERT", "UPDATE", "DELETE")


def _q(conn: AnyConnection | None, name: str) -> str:
    return quote_identifier(name)


def _exec(conn: AnyConnection, sql: str) -> None:
    if isinstance(conn, sqlite3.Connection):
        conn.execute(sql)
    else:
        conn.exec_driver_sql(sql)


def json_object_sql(conn: AnyConnection | None, info: TableInfo, ref: str) -> str:
    """json_object of every column of a row, chunked under SQLite's argument limit; blobs as hex."""

    def value(column: sa.Column) -> str:
        expr = f"{ref}.{_q(conn, column.name)}"
        if carrier_of(column).kind == "bytes":  # also a domain over bytea
            return f"CASE WHEN {expr} IS NULL THEN NULL ELSE hex({expr}) END"
        return expr

    columns = list(info.table.columns)
    chunks = [columns[i : i + JSON_ARGS_PER_CALL] for i in range(0, len(columns), JSON_ARGS_PER_CALL)]
    objects = ["json_object(" + ", ".join(f"{sql_string(c.name)}, {value(c)}" for c in chunk) + ")" for chunk in chunks]
    if len(objects) == 1:
        return objects[0]
    # Chunks are joined as text: `{a..}` + `{b..}` -> `{a.., b..}`. Neither json_set (a JSON path cannot
    # name a key holding a double quote: such a column was silently left out) nor json_patch (it drops
    # nulls) can merge them. A json_object's text always ends in `}` after a scalar, and starts with `{"`,
    # so trimming one brace from each side is exact.
    inner = [f"rtrim({objects[0]}, '}}')"]
    inner += [f"trim({o}, '{{}}')" for o in objects[1:-1]]
    inner.append(f"ltrim({objects[-1]}, '{{')")
    return " || ',' || ".join(inner)


def _json_key_sql(conn: AnyConnection | None, info: TableInfo, ref: str) -> str:
    return "json_array(" + ", ".join(f"{ref}.{_q(conn, c)}" for c in info.pk) + ")"


LOG_TABLE_SQL = (
    f"CREATE TABLE {LOG_TABLE} ("
    "seq INTEGER PRIMARY KEY AUTOINCREMENT, table_name TEXT NOT NULL, op TEXT NOT NULL, "
    "row_key TEXT NOT NULL, old_values TEXT, new_values TEXT, changed_at TEXT NOT NULL)"
)


def install_replica_log(conn: AnyConnection, infos: list[TableInfo]) -> None:
    """The change log and the triggers that fill it, on every replica table."""
    _exec(conn, LOG_TABLE_SQL.replace("CREATE TABLE", "CREATE TABLE IF NOT EXISTS", 1))
    for info in infos:
        for trigger, sql in replica_log_triggers(conn, info).items():
            _exec(conn, f"DROP TRIGGER IF EXISTS {_q(conn, trigger)}")
            _exec(conn, sql)


def replica_log_triggers(conn: AnyConnection | None, info: TableInfo) -> dict[str, str]:
    """Name -> exact CREATE TRIGGER text of the change-log triggers of one table (as SQLite stores it:
    a sync compares a replica's triggers with these, character for character)."""
    table = _q(conn, info.name)
    name = sql_string(info.name)
    same_key = " AND ".join(f"OLD.{_q(conn, c)} IS NEW.{_q(conn, c)}" for c in info.pk)
    new_obj, old_obj = json_object_sql(conn, info, "NEW"), json_object_sql(conn, info, "OLD")
    new_key, old_key = _json_key_sql(conn, info, "NEW"), _json_key_sql(conn, info, "OLD")
    insert_log = f"INSERT INTO {LOG_TABLE} (table_name, op, row_key, old_values, new_values, changed_at) VALUES"
    statements = {
        "_ins": f"AFTER INSERT ON {table} BEGIN {insert_log} ({name}, 'I', {new_key}, NULL, {new_obj}, {NOW}); END",
        "_del": f"AFTER DELETE ON {table} BEGIN {insert_log} ({name}, 'D', {old_key}, {old_obj}, NULL, {NOW}); END",
        "_upd": (
            f"AFTER UPDATE ON {table} WHEN {same_key} BEGIN "
            f"{insert_log} ({name}, 'U', {new_key}, {old_obj}, {new_obj}, {NOW}); END"
        ),
        # A changed primary key is the old row deleted and a new row inserted.
        "_rekey": (
            f"AFTER UPDATE ON {table} WHEN NOT ({same_key}) BEGIN "
            f"{insert_log} ({name}, 'D', {old_key}, {old_obj}, NULL, {NOW}); "
            f"{insert_log} ({name}, 'I', {new_key}, NULL, {new_obj}, {NOW}); END"
        ),
    }
    out = {}
    for suffix, body in statements.items():
        trigger = trigger_name("_sync_log", info.name, suffix)
        out[trigger] = f"CREATE TRIGGER {_q(conn, trigger)} {body}"
    return out


def frozen_trigger_sql(table: str, op: str) -> tuple[str, str, str]:
    """(name, text before the message, text after it) of a freeze trigger: its message is a SQL string
    literal between the two."""
    trigger = trigger_name("_sync_frozen", table, "_" + op.lower())
    before = f"CREATE TRIGGER {_q(None, trigger)} BEFORE {op} ON {_q(None, table)} BEGIN SELECT RAISE(ABORT, "
    return trigger, before, "); END"


def set_replica_frozen(conn: AnyConnection, tables: list[str], message: str | None) -> None:
    """Make every write to the replica's tables fail with `message`; None lifts the freeze.

    Installed only while frozen, so normal local writes pay nothing for it.
    """
    for table in tables:
        for op in FROZEN_OPS:
            trigger, before, after = frozen_trigger_sql(table, op)
            _exec(conn, f"DROP TRIGGER IF EXISTS {_q(conn, trigger)}")
            if message is not None:
                _exec(conn, before + sql_string(message) + after)
