"""PostgreSQL master change capture: one PL/pgSQL trigger function per table feeding the field clock,
and keeping a tombstone (the row's image, time and roles) of every row the master deletes. The
`PostgreSQLImpl` installs them (`postgresql.py`)."""

from __future__ import annotations

from sqlalchemy.engine import Connection

from sync_pipeline.engine.column_types import carrier_of
from sync_pipeline.engine.dialects.capture import dollar_quoted, quote_identifier, sql_string, trigger_name
from sync_pipeline.engine.schema import KEY_SEPARATOR, TableInfo

NOW = """to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')"""
UPSERT_TAIL = "ON CONFLICT (table_name, row_key, column_name) DO UPDATE SET changed_at = EXCLUDED.changed_at"
# Who deleted a row, as far as the server knows it: the roles in force and the client's application name.
DELETED_BY = (
    "json_build_object('current_user', current_user, 'session_user', session_user, "
    "'application_name', current_setting('application_name', true))::text"
)
TOMBSTONE_UPSERT_TAIL = (
    "ON CONFLICT (table_name, row_key, deleted_at) DO UPDATE SET row_image = EXCLUDED.row_image, "
    "deleted_by = EXCLUDED.deleted_by"
)

_q = quote_identifier


def _literal(value: str) -> str:
    """A string literal by PostgreSQL's own rule (quote_literal): read the same whatever
    standard_conforming_strings is, since a backslash makes it an escape string with the backslash doubled."""
    if "\\" in value:
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    return sql_string(value)


def function_body(info: TableInfo) -> str:
    """The trigger function's PL/pgSQL body. Every identifier in it is quoted (`quote_identifier`), every
    name that is data a string literal; `dollar_quoted` makes sure none of them can end the body."""
    sep = f"chr({ord(KEY_SEPARATOR)})"

    def key(ref: str) -> str:
        return f" || {sep} || ".join(f"CAST({ref}.{_q(c)} AS TEXT)" for c in info.pk)

    name = _literal(info.name)

    def differs(c: str) -> str:
        old, new = f"OLD.{_q(c)}", f"NEW.{_q(c)}"
        if carrier_of(info.table.columns[c]).kind == "text":
            # Types carried as text may have no equality operator (json, xml, point): compare the text.
            old, new = f"CAST({old} AS TEXT)", f"CAST({new} AS TEXT)"
        return f"{old} IS DISTINCT FROM {new}"

    changed_columns = ",\n          ".join(f"({_literal(c)}, {differs(c)})" for c in info.columns)
    return f"""
DECLARE
  ts text := {NOW};
BEGIN
  IF TG_OP = 'DELETE' THEN
    INSERT INTO sync_field_clock (table_name, row_key, column_name, changed_at)
      VALUES ({name}, {key("OLD")}, '*', ts) {UPSERT_TAIL};
    INSERT INTO sync_tombstone (table_name, row_key, deleted_at, row_image, deleted_by)
      VALUES ({name}, {key("OLD")}, ts, to_jsonb(OLD)::text, {DELETED_BY}) {TOMBSTONE_UPSERT_TAIL};
  ELSIF TG_OP = 'INSERT' THEN
    INSERT INTO sync_field_clock (table_name, row_key, column_name, changed_at)
      VALUES ({name}, {key("NEW")}, '*', ts) {UPSERT_TAIL};
  ELSE
    INSERT INTO sync_field_clock (table_name, row_key, column_name, changed_at)
      SELECT {name}, {key("NEW")}, v.col, ts
      FROM (VALUES {changed_columns}) AS v(col, changed)
      WHERE v.changed
      {UPSERT_TAIL};
  END IF;
  RETURN NULL;
END
"""


def run_ddl(conn: Connection, statement: str) -> None:
    """Run trigger DDL through the driver without parameters: the driver then parses no placeholder in
    it, so a `%s` or `%(x)s` in a name stays part of the name (exec_driver_sql would parse them)."""
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        cursor.execute(statement)
    finally:
        cursor.close()


def function_of(info: TableInfo) -> str:
    return trigger_name("sync_clock_fn", info.name)


def trigger_of(info: TableInfo) -> str:
    return trigger_name("sync_clock", info.name)


def install(conn: Connection, info: TableInfo) -> None:
    function = _q(function_of(info))
    body = dollar_quoted(function_body(info))
    run_ddl(conn, f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS {body}")
    trigger = _q(trigger_of(info))
    run_ddl(conn, f"DROP TRIGGER IF EXISTS {trigger} ON {_q(info.name)}")
    run_ddl(
        conn,
        f"CREATE TRIGGER {trigger} AFTER INSERT OR UPDATE OR DELETE ON {_q(info.name)} "
        f"FOR EACH ROW EXECUTE FUNCTION {function}()",
    )


def remove(conn: Connection, info: TableInfo) -> None:
    run_ddl(conn, f"DROP TRIGGER IF EXISTS {_q(trigger_of(info))} ON {_q(info.name)}")
    run_ddl(conn, f"DROP FUNCTION IF EXISTS {_q(function_of(info))}()")
