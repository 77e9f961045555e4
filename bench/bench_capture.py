"""Master change capture on PostgreSQL: what the field-clock triggers cost a writer into the master.

    .venv/bin/python bench/bench_capture.py --quick   # 100k-row table, 2k changes
    .venv/bin/python bench/bench_capture.py           # 1M-row table, 10k changes

Three variants of the same table: no trigger (the baseline), the row trigger of earlier releases (one
PL/pgSQL call per row), and today's statement-level triggers with transition tables. Each writes the same
changes four ways, in a transaction rolled back afterwards (the table stays as it was, vacuumed after
each variant): an `executemany` of single-row UPDATEs, one `UPDATE … FROM` of the keys, one
`INSERT … SELECT` of new rows and one `DELETE … USING`. Printed: the median seconds and the ratio to the
variant without trigger.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sync_pipeline.engine import store  # noqa: E402
from sync_pipeline.engine.dialects import impl_for, postgresql_capture  # noqa: E402
from sync_pipeline.engine.dialects.capture import dollar_quoted  # noqa: E402
from sync_pipeline.engine.schema import TableInfo, reflect_tables  # noqa: E402

PG_URL = os.environ.get("SYNC_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TABLE_DDL = "CREATE TABLE item (id integer PRIMARY KEY, name text NOT NULL, qty integer NOT NULL, note text)"
FILL = sa.text("INSERT INTO item SELECT g, 'item ' || g, mod(g, 100), NULL FROM generate_series(1, :n) g")

Write = Callable[[object, list[int], int], None]


def row_trigger_body(info: TableInfo) -> str:
    """The earlier releases' per-row trigger function (kept here to compare with)."""
    cap = postgresql_capture
    name = cap._literal(info.name)
    changed = ", ".join(f"({cap._literal(c)}, {cap.differs_sql(info, 'OLD', 'NEW', c)})" for c in info.columns)
    return f"""
DECLARE ts text := {cap.NOW};
BEGIN
  IF TG_OP = 'DELETE' THEN
    {cap._clock_insert("")} VALUES ({name}, {cap.key_sql(info, "OLD")}, '*', ts) {cap.UPSERT_TAIL};
    INSERT INTO sync_tombstone (table_name, row_key, deleted_at, row_image, deleted_by)
      VALUES ({name}, {cap.key_sql(info, "OLD")}, ts, to_jsonb(OLD)::text, {cap.DELETED_BY})
      {cap.TOMBSTONE_UPSERT_TAIL};
  ELSIF TG_OP = 'INSERT' THEN
    {cap._clock_insert("")} VALUES ({name}, {cap.key_sql(info, "NEW")}, '*', ts) {cap.UPSERT_TAIL};
  ELSE
    {cap._clock_insert("")} SELECT {name}, {cap.key_sql(info, "NEW")}, v.col, ts
      FROM (VALUES {changed}) AS v(col, changed) WHERE v.changed {cap.UPSERT_TAIL};
  END IF;
  RETURN NULL;
END
"""


def install(conn: sa.Connection, variant: str) -> None:
    info = reflect_tables(conn, ["item"])["item"]
    if variant == "statement":
        impl_for(conn).install_capture(conn, info)
    elif variant == "row":
        body = dollar_quoted(row_trigger_body(info))
        conn.exec_driver_sql(f"CREATE FUNCTION item_row_clock() RETURNS trigger LANGUAGE plpgsql AS {body}")
        conn.exec_driver_sql(
            "CREATE TRIGGER item_row_clock AFTER INSERT OR UPDATE OR DELETE ON item "
            "FOR EACH ROW EXECUTE FUNCTION item_row_clock()"
        )


def uninstall(conn: sa.Connection, variant: str) -> None:
    if variant == "statement":
        impl_for(conn).remove_capture(conn, reflect_tables(conn, ["item"])["item"])
    elif variant == "row":
        conn.exec_driver_sql("DROP TRIGGER item_row_clock ON item")
        conn.exec_driver_sql("DROP FUNCTION item_row_clock()")


def executemany_updates(cur: object, keys: list[int], rows: int) -> None:
    cur.executemany("UPDATE item SET qty = qty + 1, note = 'changed' WHERE id = %s", [(k,) for k in keys])  # type: ignore[attr-defined]


def update_from(cur: object, keys: list[int], rows: int) -> None:
    cur.execute(  # type: ignore[attr-defined]
        "UPDATE item SET qty = item.qty + 1, note = 'changed' FROM unnest(%s::integer[]) AS k(id) WHERE item.id = k.id",
        (keys,),
    )


def insert_select(cur: object, keys: list[int], rows: int) -> None:
    cur.execute(  # type: ignore[attr-defined]
        "INSERT INTO item SELECT g, 'new ' || g, 1, 'new' FROM generate_series(%s::integer, %s::integer) g",
        (rows + 1, rows + len(keys)),
    )


def delete_using(cur: object, keys: list[int], rows: int) -> None:
    cur.execute("DELETE FROM item USING unnest(%s::integer[]) AS k(id) WHERE item.id = k.id", (keys,))  # type: ignore[attr-defined]


WRITES: dict[str, Write] = {
    "executemany UPDATE": executemany_updates,
    "UPDATE … FROM": update_from,
    "INSERT … SELECT": insert_select,
    "DELETE … USING": delete_using,
}


def timed_write(engine: sa.Engine, write: Write, keys: list[int], rows: int) -> float:
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        start = time.perf_counter()
        write(cur, keys, rows)
        cur.execute("SELECT 1")  # the statement triggers of the last statement have run
        elapsed = time.perf_counter() - start
        raw.rollback()
    finally:
        raw.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="100k rows, 2k changes")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rows", type=int, help="rows in the table (overrides the size)")
    parser.add_argument("--changes", type=int, help="changes per write (overrides the size)")
    args = parser.parse_args()
    rows, changes = (100_000, 2_000) if args.quick else (1_000_000, 10_000)
    rows, changes = args.rows or rows, args.changes or changes
    schema = f"bench_capture_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.schema.CreateSchema(schema))
    engine = sa.create_engine(PG_URL, connect_args={"options": f"-csearch_path={schema}"})
    try:
        with engine.begin() as conn:
            store.create_sync_tables(conn)
            conn.exec_driver_sql(TABLE_DDL)
            conn.execute(FILL, {"n": rows})
            conn.exec_driver_sql("ANALYZE item")
        keys = list(range(1, rows + 1, rows // changes))[:changes]
        variants = ["none", "row", "statement"]
        runs: dict[tuple[str, str], list[float]] = {}
        for n in range(args.repeat + 1):  # the first round warms up and is not counted
            # Each round in another order, and the table vacuumed after each variant: every write is rolled
            # back, and the dead rows it leaves must not slow down whichever variant comes later.
            for variant in variants[n % 3 :] + variants[: n % 3]:
                with engine.begin() as conn:
                    install(conn, variant)
                for label, write in WRITES.items():
                    elapsed = timed_write(engine, write, keys, rows)
                    if n:
                        runs.setdefault((variant, label), []).append(elapsed)
                with engine.begin() as conn:
                    uninstall(conn, variant)
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.exec_driver_sql("VACUUM ANALYZE item")
        results = {k: statistics.median(v) for k, v in runs.items()}
        load = os.getloadavg()[0]
        print(f"PostgreSQL, {rows:,} rows, {changes:,} changes per write, median of {args.repeat}, load {load:.2f}")
        print(f"{'write':22} {'no trigger':>11} {'row trigger':>18} {'statement trigger':>22}")
        for label in WRITES:
            none, row, statement = (results[(v, label)] for v in ("none", "row", "statement"))
            ratios = f"{row:8.3f}s ({row / none:4.2f} ×) {statement:11.3f}s ({statement / none:4.2f} ×)"
            print(f"{label:22} {none:10.3f}s {ratios}")
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.schema.DropSchema(schema, cascade=True))
        admin.dispose()


if __name__ == "__main__":
    main()
