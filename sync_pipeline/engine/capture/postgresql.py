"""PostgreSQL master change capture: one PL/pgSQL trigger function per table feeding the field clock."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync_pipeline.engine.capture.base import MasterCapture, sql_string, trigger_name
from sync_pipeline.engine.column_types import carrier_of
from sync_pipeline.engine.schema import KEY_SEPARATOR, TableInfo

NOW = """to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')"""
UPSERT_TAIL = "ON CONFLICT (table_name, row_key, column_name) DO UPDATE SET changed_at = EXCLUDED.changed_at"


def _q(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote(name)


class PostgreSQLMasterCapture(MasterCapture):
    def now(self, conn: Connection) -> str:
        utc = sa.func.timezone("UTC", sa.func.clock_timestamp())
        return conn.execute(sa.select(sa.func.to_char(utc, 'YYYY-MM-DD"T"HH24:MI:SS.US'))).scalar_one()

    def _function(self, info: TableInfo) -> str:
        return trigger_name("sync_clock_fn", info.name)

    def _trigger(self, info: TableInfo) -> str:
        return trigger_name("sync_clock", info.name)

    def install(self, conn: Connection, info: TableInfo) -> None:
        sep = f"chr({ord(KEY_SEPARATOR)})"

        def key(ref: str) -> str:
            return f" || {sep} || ".join(f"CAST({ref}.{_q(conn, c)} AS TEXT)" for c in info.pk)

        name = sql_string(info.name)

        def differs(c: str) -> str:
            old, new = f"OLD.{_q(conn, c)}", f"NEW.{_q(conn, c)}"
            if carrier_of(info.table.columns[c]).kind == "text":
                # Types carried as text may have no equality operator (json, xml, point): compare the text.
                old, new = f"CAST({old} AS TEXT)", f"CAST({new} AS TEXT)"
            return f"{old} IS DISTINCT FROM {new}"

        changed_columns = ",\n          ".join(f"({sql_string(c)}, {differs(c)})" for c in info.columns)
        function = _q(conn, self._function(info))
        conn.exec_driver_sql(
            f"""
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $sync$
DECLARE
  ts text := {NOW};
BEGIN
  IF TG_OP = 'DELETE' THEN
    INSERT INTO sync_field_clock (table_name, row_key, column_name, changed_at)
      VALUES ({name}, {key("OLD")}, '*', ts) {UPSERT_TAIL};
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
$sync$"""
        )
        trigger = _q(conn, self._trigger(info))
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {trigger} ON {_q(conn, info.name)}")
        conn.exec_driver_sql(
            f"CREATE TRIGGER {trigger} AFTER INSERT OR UPDATE OR DELETE ON {_q(conn, info.name)} "
            f"FOR EACH ROW EXECUTE FUNCTION {function}()"
        )

    def remove(self, conn: Connection, info: TableInfo) -> None:
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {_q(conn, self._trigger(info))} ON {_q(conn, info.name)}")
        conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {_q(conn, self._function(info))}()")

    def installed(self, conn: Connection, info: TableInfo) -> bool:
        found = conn.execute(
            sa.text("SELECT 1 FROM pg_trigger WHERE tgname = :n AND tgrelid = CAST(:t AS regclass)"),
            {"n": self._trigger(info), "t": _q(conn, info.name)},
        ).first()
        return found is not None
