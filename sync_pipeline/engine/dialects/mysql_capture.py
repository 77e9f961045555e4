"""MariaDB/MySQL change-capture trigger DDL: three row triggers per table (one per event, no transition
tables) writing the field clock and the tombstones.

Every identifier is quoted by MySQL's rule (backticks, a backtick doubled); every name that is data goes
in as a hex literal (`_utf8mb4 X'…'`), which no sql_mode (NO_BACKSLASH_ESCAPES, ANSI_QUOTES) reads
otherwise. Old and new values are compared as bytes (`CAST(… AS BINARY)`): under a case-insensitive
collation `'Muller' <=> 'MULLER'` is true, yet the change must be recorded.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync_pipeline.engine.dialects.capture import trigger_name
from sync_pipeline.engine.schema import KEY_SEPARATOR, TableInfo

# The trigger clock: UTC with microseconds, in the format every dialect's triggers write.
NOW = "DATE_FORMAT(UTC_TIMESTAMP(6), '%Y-%m-%dT%H:%i:%s.%f')"


def quote_identifier(name: str) -> str:
    """A MySQL delimited identifier: in backticks, a backtick doubled. Always quoted (reserved words such
    as `order`, spaces, quotes, `%`). MySQL identifiers cannot hold NUL."""
    if "\x00" in name:
        raise ValueError(f"an identifier with a NUL character cannot be quoted: {name!r}")
    return "`" + name.replace("`", "``") + "`"


def text_literal(value: str) -> str:
    """A utf8mb4 string literal written as hex: no quote, backslash or sql_mode can change how it reads."""
    return f"_utf8mb4 X'{value.encode().hex()}' COLLATE utf8mb4_bin" if value else "_utf8mb4 '' COLLATE utf8mb4_bin"


_q = quote_identifier


def _key_sql(info: TableInfo, ref: str) -> str:
    """The row's key as text, as `schema.key_text` renders it (CAST(col AS CHAR), joined by KEY_SEPARATOR)."""
    sep = f"CHAR({ord(KEY_SEPARATOR)} USING utf8mb4)"
    parts = [f"CAST({ref}.{_q(c)} AS CHAR CHARACTER SET utf8mb4)" for c in info.pk]
    return parts[0] if len(parts) == 1 else "CONCAT(" + f", {sep}, ".join(parts) + ")"


def _clock_row(info: TableInfo, ref: str, column: str) -> str:
    return (
        "INSERT INTO `sync_field_clock` (`table_name`, `row_key`, `column_name`, `changed_at`) "
        f"VALUES ({text_literal(info.name)}, {_key_sql(info, ref)}, {text_literal(column)}, {NOW}) "
        "ON DUPLICATE KEY UPDATE `changed_at` = VALUES(`changed_at`)"
    )


def _changed_columns(info: TableInfo) -> str:
    """A BEGIN … END block writing the clock row of each column whose bytes differ between OLD and NEW
    (MySQL has no transition tables). One IF per column rather than an INSERT … SELECT from a derived
    table, which would be built for every updated row."""

    def changed(c: str) -> str:
        return f"NOT (CAST(OLD.{_q(c)} AS BINARY) <=> CAST(NEW.{_q(c)} AS BINARY))"

    statements = " ".join(f"IF {changed(c)} THEN {_clock_row(info, 'NEW', c)}; END IF;" for c in info.columns)
    return f"BEGIN {statements} END"


def _row_image(info: TableInfo, ref: str) -> str:
    """The deleted row as a JSON object; binary values as hex (JSON holds text only)."""
    pairs = []
    for c in info.columns:
        value = f"{ref}.{_q(c)}"
        if isinstance(info.table.columns[c].type, sa.types._Binary):
            value = f"HEX({value})"
        pairs.append(f"{text_literal(c)}, {value}")
    return "JSON_OBJECT(" + ", ".join(pairs) + ")"


def _tombstone_row(info: TableInfo) -> str:
    deleted_by = "JSON_OBJECT('current_user', CURRENT_USER(), 'session_user', SESSION_USER())"
    return (
        "INSERT INTO `sync_tombstone` (`table_name`, `row_key`, `deleted_at`, `row_image`, `deleted_by`) "
        f"VALUES ({text_literal(info.name)}, {_key_sql(info, 'OLD')}, {NOW}, {_row_image(info, 'OLD')}, {deleted_by}) "
        "ON DUPLICATE KEY UPDATE `row_image` = VALUES(`row_image`), `deleted_by` = VALUES(`deleted_by`)"
    )


def _ddl(conn: Connection, statement: str) -> None:
    """Trigger DDL straight through the driver without parameters: a `%` in a name stays a `%`."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(statement)
    finally:
        cursor.close()


def trigger_names(info: TableInfo) -> list[str]:
    return [trigger_name("sync_clock", info.name, s) for s in ("_ins", "_upd", "_del")]


def install(conn: Connection, info: TableInfo) -> None:
    ins, upd, dele = (_q(n) for n in trigger_names(info))
    table = _q(info.name)
    # CREATE OR REPLACE: each statement commits by itself (MySQL DDL), and re-running init-master after a
    # failure half-way replaces whatever the failed run left.
    _ddl(conn, f"CREATE OR REPLACE TRIGGER {ins} AFTER INSERT ON {table} FOR EACH ROW {_clock_row(info, 'NEW', '*')}")
    _ddl(conn, f"CREATE OR REPLACE TRIGGER {upd} AFTER UPDATE ON {table} FOR EACH ROW {_changed_columns(info)}")
    _ddl(
        conn,
        f"CREATE OR REPLACE TRIGGER {dele} AFTER DELETE ON {table} FOR EACH ROW "
        f"BEGIN {_clock_row(info, 'OLD', '*')}; {_tombstone_row(info)}; END",
    )


def remove(conn: Connection, info: TableInfo) -> None:
    for name in trigger_names(info):
        _ddl(conn, f"DROP TRIGGER IF EXISTS {_q(name)}")
