"""SQLite change capture: the master's field clock, and the replica's change log and freeze.

The replica is always SQLite, so its change log lives here too.
"""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync_pipeline.engine.capture.base import MasterCapture, quote_identifier, sql_string, trigger_name
from sync_pipeline.engine.column_types import carrier_of
from sync_pipeline.engine.schema import KEY_SEPARATOR, TableInfo

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


def _key_sql(conn: Connection, info: TableInfo, ref: str) -> str:
    sep = f"char({ord(KEY_SEPARATOR)})"
    return f" || {sep} || ".join(f"CAST({ref}.{_q(conn, c)} AS TEXT)" for c in info.pk)


def _clock_upsert(table: str, key_sql: str, column_sql: str, where: str = "") -> str:
    return (
        "INSERT INTO sync_field_clock (table_name, row_key, column_name, changed_at) "
        f"SELECT {sql_string(table)}, {key_sql}, {column_sql}, {NOW} WHERE 1 {where} "
        "ON CONFLICT (table_name, row_key, column_name) DO UPDATE SET changed_at = excluded.changed_at;"
    )


def _tombstone_insert(conn: AnyConnection, info: TableInfo) -> str:
    # SQLite knows no user: who deleted the row stays unknown (NULL).
    return (
        "INSERT INTO sync_tombstone (table_name, row_key, deleted_at, row_image, deleted_by) "
        f"VALUES ({sql_string(info.name)}, {_key_sql(conn, info, 'OLD')}, {NOW}, "
        f"{_json_object_sql(conn, info, 'OLD')}, NULL) "
        "ON CONFLICT (table_name, row_key, deleted_at) DO UPDATE SET row_image = excluded.row_image;"
    )


class SQLiteMasterCapture(MasterCapture):
    def now(self, conn: Connection) -> str:
        return conn.execute(sa.select(sa.func.strftime("%Y-%m-%dT%H:%M:%f", "now"))).scalar_one()

    def _names(self, info: TableInfo) -> list[str]:
        return [trigger_name("sync_clock", info.name, s) for s in ("_ins", "_upd", "_del")]

    def install(self, conn: Connection, info: TableInfo) -> None:
        self.remove(conn, info)
        ins, upd, dele = self._names(info)
        table = _q(conn, info.name)
        star = sql_string("*")
        conn.exec_driver_sql(
            f"CREATE TRIGGER {_q(conn, ins)} AFTER INSERT ON {table} BEGIN "
            f"{_clock_upsert(info.name, _key_sql(conn, info, 'NEW'), star)} END"
        )
        conn.exec_driver_sql(
            f"CREATE TRIGGER {_q(conn, dele)} AFTER DELETE ON {table} BEGIN "
            f"{_clock_upsert(info.name, _key_sql(conn, info, 'OLD'), star)} "
            f"{_tombstone_insert(conn, info)} END"
        )
        per_column = " ".join(
            _clock_upsert(
                info.name,
                _key_sql(conn, info, "NEW"),
                sql_string(c),
                f"AND OLD.{_q(conn, c)} IS NOT NEW.{_q(conn, c)}",
            )
            for c in info.columns
        )
        conn.exec_driver_sql(f"CREATE TRIGGER {_q(conn, upd)} AFTER UPDATE ON {table} BEGIN {per_column} END")

    def remove(self, conn: Connection, info: TableInfo) -> None:
        for name in self._names(info):
            conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {_q(conn, name)}")

    def installed(self, conn: Connection, info: TableInfo) -> bool:
        names = set(self._names(info))
        found = conn.execute(
            sa.text("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t"), {"t": info.name}
        ).scalars()
        return names <= set(found)


# ----------------------------------------------------------------------------------------------
# Replica
# ----------------------------------------------------------------------------------------------


def _json_object_sql(conn: AnyConnection | None, info: TableInfo, ref: str) -> str:
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
    new_obj, old_obj = _json_object_sql(conn, info, "NEW"), _json_object_sql(conn, info, "OLD")
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
