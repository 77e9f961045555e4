"""SQLite master change capture: three triggers per table (insert, update, delete) writing the field
clock and the tombstones. Trigger DDL: every identifier quoted (`quote_identifier`), every name that is
data a string literal. Installed by `SQLiteImpl` (`sqlite.py`)."""

from __future__ import annotations

from sqlalchemy.engine import Connection

from sync_pipeline.engine.dialects.capture import quote_identifier, sql_string, trigger_name
from sync_pipeline.engine.dialects.sqlite_replica import json_object_sql
from sync_pipeline.engine.schema import KEY_SEPARATOR, TableInfo

NOW = "strftime('%Y-%m-%dT%H:%M:%f', 'now')"


def _q(conn: Connection | None, name: str) -> str:
    return quote_identifier(name)


def _key_sql(conn: Connection, info: TableInfo, ref: str) -> str:
    sep = f"char({ord(KEY_SEPARATOR)})"
    return f" || {sep} || ".join(f"CAST({ref}.{_q(conn, c)} AS TEXT)" for c in info.pk)


def _clock_upsert(table: str, key_sql: str, column_sql: str, where: str = "") -> str:
    return (
        "INSERT INTO sync_field_clock (table_name, row_key, column_name, changed_at) "
        f"SELECT {sql_string(table)}, {key_sql}, {column_sql}, {NOW} WHERE 1 {where} "
        "ON CONFLICT (table_name, row_key, column_name) DO UPDATE SET changed_at = excluded.changed_at;"
    )


def _tombstone_insert(conn: Connection, info: TableInfo) -> str:
    # SQLite knows no user: who deleted the row stays unknown (NULL).
    return (
        "INSERT INTO sync_tombstone (table_name, row_key, deleted_at, row_image, deleted_by) "
        f"VALUES ({sql_string(info.name)}, {_key_sql(conn, info, 'OLD')}, {NOW}, "
        f"{json_object_sql(conn, info, 'OLD')}, NULL) "
        "ON CONFLICT (table_name, row_key, deleted_at) DO UPDATE SET row_image = excluded.row_image;"
    )


def trigger_names(info: TableInfo) -> list[str]:
    return [trigger_name("sync_clock", info.name, s) for s in ("_ins", "_upd", "_del")]


def install(conn: Connection, info: TableInfo) -> None:
    """The field-clock triggers of one table (insert, update per column, delete with its tombstone)."""
    remove(conn, info)
    ins, upd, dele = trigger_names(info)
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


def remove(conn: Connection, info: TableInfo) -> None:
    for name in trigger_names(info):
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {_q(conn, name)}")
