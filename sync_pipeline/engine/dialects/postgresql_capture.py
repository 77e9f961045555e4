"""PostgreSQL master change capture: statement-level triggers with transition tables feeding the field
clock and keeping a tombstone (the row's image, time and roles) of every row the master deletes. The
`PostgreSQLImpl` installs them (`postgresql.py`).

One PL/pgSQL function per table serves four triggers:
- `…_ins`, `…_upd`, `…_del`: AFTER INSERT / UPDATE / DELETE FOR EACH STATEMENT, each with its transition
  tables (PostgreSQL refuses transition tables on a trigger for several events). A statement that writes
  10,000 rows costs one set-based upsert into the clock (two for a delete), not 10,000 function calls.
- `…_key`: AFTER UPDATE FOR EACH ROW WHEN the primary key changed, which fires for no row of an ordinary
  update. It is the only thing that knows which old row became which new one when keys change (see
  `_update`), and a key changes seldom.

The clock means what the row trigger of earlier releases wrote: per row key (CAST(col AS TEXT) joined by
KEY_SEPARATOR) and changed column (or '*' for an inserted or deleted row) the time of the change, the
master's `clock_timestamp()` in UTC, taken once per statement after its rows are written (never earlier
than a row trigger's time for the same row). On a partitioned table the triggers are on the table and on
every partition: statement triggers are not inherited, and a write straight into a partition fires only
the partition's.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync_pipeline.engine.column_types import carrier_of
from sync_pipeline.engine.dialects.capture import dollar_quoted, quote_identifier, sql_string, trigger_name
from sync_pipeline.engine.schema import KEY_SEPARATOR, TableInfo

NOW = """to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US')"""


def _clock_insert(home: str) -> str:
    """`home`: the sync tables' schema, quoted, with its dot (see `install`)."""
    return f"INSERT INTO {home}sync_field_clock (table_name, row_key, column_name, changed_at)"


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
# The transition tables' names inside the function (relation names: no column can clash with them).
OLD_ROWS, NEW_ROWS = "sync_old_rows", "sync_new_rows"
EVENTS = {"_ins": "INSERT", "_upd": "UPDATE", "_del": "DELETE"}
REFERENCING = {
    "INSERT": f"REFERENCING NEW TABLE AS {NEW_ROWS}",
    "UPDATE": f"REFERENCING OLD TABLE AS {OLD_ROWS} NEW TABLE AS {NEW_ROWS}",
    "DELETE": f"REFERENCING OLD TABLE AS {OLD_ROWS}",
}

# A partitioned table's partitions at every depth, quoted by PostgreSQL's own rule (they may live in
# another schema). Foreign partitions are left out: they take no trigger with transition tables.
_PARTITIONS = sa.text(
    """
    WITH RECURSIVE tree(oid) AS (
        SELECT i.inhrelid FROM pg_inherits i WHERE i.inhparent = CAST(:t AS regclass)
        UNION ALL
        SELECT i.inhrelid FROM tree JOIN pg_inherits i ON i.inhparent = tree.oid
    )
    SELECT format('%I.%I', n.nspname, c.relname)
    FROM tree JOIN pg_class c ON c.oid = tree.oid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relispartition AND c.relkind IN ('r', 'p')
    ORDER BY 1
    """
)

# The table and its partitions at every depth that lack one of the triggers `names`, or have
# it switched off (ALTER TABLE … DISABLE TRIGGER): writes there would not reach the clock. Foreign
# partitions take no such trigger and are left out, as `install` leaves them, and so are the children of
# plain inheritance (INHERITS): tables of their own, which `install` does not touch either.
_UNCAPTURED = sa.text(
    """
    WITH RECURSIVE tree(oid) AS (
        SELECT CAST(CAST(:t AS regclass) AS oid)
        UNION ALL
        SELECT i.inhrelid FROM tree JOIN pg_inherits i ON i.inhparent = tree.oid
    )
    SELECT format('%I.%I', n.nspname, c.relname)
    FROM tree JOIN pg_class c ON c.oid = tree.oid JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p') AND (c.relispartition OR c.oid = CAST(:t AS regclass)) AND (
        SELECT count(DISTINCT g.tgname) FROM pg_trigger g
        WHERE g.tgrelid = tree.oid AND g.tgname = ANY(:names) AND g.tgenabled <> 'D'
    ) < cardinality(CAST(:names AS text[]))
    ORDER BY 1
    """
)

_IS_PARTITIONED = sa.text("SELECT relkind = 'p' FROM pg_class WHERE oid = CAST(:t AS regclass)")

_q = quote_identifier


def _literal(value: str) -> str:
    """A string literal by PostgreSQL's own rule (quote_literal): read the same whatever
    standard_conforming_strings is, since a backslash makes it an escape string with the backslash doubled."""
    if "\\" in value:
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    return sql_string(value)


def key_sql(info: TableInfo, ref: str) -> str:
    sep = f"chr({ord(KEY_SEPARATOR)})"
    return f" || {sep} || ".join(f"CAST({ref}.{_q(c)} AS TEXT)" for c in info.pk)


def differs_sql(info: TableInfo, old_ref: str, new_ref: str, c: str) -> str:
    old, new = f"{old_ref}.{_q(c)}", f"{new_ref}.{_q(c)}"
    if carrier_of(info.table.columns[c]).kind == "text":
        # Types carried as text may have no equality operator (json, xml, point): compare the text.
        old, new = f"CAST({old} AS TEXT)", f"CAST({new} AS TEXT)"
    return f"{old} IS DISTINCT FROM {new}"


def _same_key(info: TableInfo, left: str, right: str) -> str:
    return " AND ".join(f"{left}.{_q(c)} = {right}.{_q(c)}" for c in info.pk)


def _update(info: TableInfo, name: str, ts: str, home: str) -> str:
    """The clock rows of one UPDATE statement, from its old and new rows paired by primary key.

    A pair's changed columns are those whose values differ, as the row trigger compared them. An update
    that changes keys cannot be paired that way: a new key with no old row ('1' → '5') and an old key with
    no new row are '*' (changed in every field; the row trigger wrote only the changed columns under the
    new key and nothing under the old one, so this is a superset). Keys that changed into keys the
    statement also vacated (`id = id + 1`, or a swap under a deferrable key) pair rows that are not the
    same; the `…_key` row trigger marks both keys of every such row '*' as well. SELECT DISTINCT: one
    statement may carry a key twice (writable CTEs updating one table), and an upsert must not propose a
    conflict key twice.
    """
    changed = ",\n          ".join(f"({_literal(c)}, {differs_sql(info, 'o', 'n', c)})" for c in info.columns)
    paired = _same_key(info, "o", "n")
    return f"""
    {_clock_insert(home)}
    SELECT DISTINCT {name}, c.row_key, c.column_name, {ts} FROM (
      SELECT {key_sql(info, "n")} AS row_key, v.col AS column_name
      FROM {NEW_ROWS} AS n JOIN {OLD_ROWS} AS o ON {paired}
      CROSS JOIN LATERAL (VALUES {changed}) AS v(col, changed)
      WHERE v.changed
      UNION ALL
      SELECT {key_sql(info, "n")}, '*' FROM {NEW_ROWS} AS n
      WHERE NOT EXISTS (SELECT FROM {OLD_ROWS} AS o WHERE {paired})
      UNION ALL
      SELECT {key_sql(info, "o")}, '*' FROM {OLD_ROWS} AS o
      WHERE NOT EXISTS (SELECT FROM {NEW_ROWS} AS n WHERE {paired})
    ) AS c
    {UPSERT_TAIL}"""


def _tombstones(
    info: TableInfo, name: str, home: str, vanished_only: bool = False, ts: str = "ts", who: str = "who"
) -> str:
    """Tombstones of the statement's old rows (`vanished_only`: those whose key no new row has). One per
    rendered key (GROUP BY, hashed: cheaper than sorting the keys for DISTINCT ON): all rows of a statement
    share one time, and an upsert must not propose a conflict key twice."""
    vanished = f"WHERE NOT EXISTS (SELECT FROM {NEW_ROWS} AS n WHERE {_same_key(info, 'o', 'n')})"
    return f"""INSERT INTO {home}sync_tombstone (table_name, row_key, deleted_at, row_image, deleted_by)
    SELECT {name}, d.row_key, {ts}, min(d.row_image), {who} FROM (
      SELECT {key_sql(info, "o")} AS row_key, to_jsonb(o)::text AS row_image FROM {OLD_ROWS} AS o
      {vanished if vanished_only else ""}
    ) AS d GROUP BY d.row_key
    {TOMBSTONE_UPSERT_TAIL};"""


def function_body(info: TableInfo, home: str, partitioned: bool = False) -> str:
    """The trigger function's PL/pgSQL body. Every identifier in it is quoted (`quote_identifier`), every
    name that is data a string literal; `dollar_quoted` makes sure none of them can end the body.
    `#variable_conflict use_variable`: `ts` and `who` are the variables even where the table has a column
    of that name (its columns are always qualified).

    `partitioned`: an UPDATE that moves a row into another partition is, for the row triggers of earlier
    releases, a DELETE from one partition and an INSERT into the other: they wrote the old key's tombstone.
    Here the move is one UPDATE whose old key has no new row (the partition key is part of the primary
    key), so the UPDATE writes the tombstones of such keys on a partitioned table."""
    name = _literal(info.name)
    vanished = _tombstones(info, name, home, vanished_only=True, ts="$1", who="$2").rstrip().removesuffix(";")
    moved = f"\n    who := {DELETED_BY};\n    EXECUTE {_literal(vanished)} USING ts, who;" if partitioned else ""
    return f"""
#variable_conflict use_variable
DECLARE
  ts text := {NOW};
  who text;
BEGIN
  IF TG_LEVEL = 'ROW' THEN
    -- The key changed: both keys changed in every field (separate statements: they may render alike).
    {_clock_insert(home)} VALUES ({name}, {key_sql(info, "OLD")}, '*', ts) {UPSERT_TAIL};
    {_clock_insert(home)} VALUES ({name}, {key_sql(info, "NEW")}, '*', ts) {UPSERT_TAIL};
  ELSIF TG_OP = 'INSERT' THEN
    {_clock_insert(home)}
    SELECT DISTINCT {name}, {key_sql(info, "n")}, '*', ts FROM {NEW_ROWS} AS n
    {UPSERT_TAIL};
  ELSIF TG_OP = 'DELETE' THEN
    who := {DELETED_BY};
    {_clock_insert(home)}
    SELECT DISTINCT {name}, {key_sql(info, "o")}, '*', ts FROM {OLD_ROWS} AS o
    {UPSERT_TAIL};
    {_tombstones(info, name, home)}
  ELSE
    -- Planned for this statement's rows (EXECUTE is never cached): a plan cached after single-row updates
    -- pairs a 10,000-row update's old and new rows by a nested loop, seconds instead of milliseconds.
    EXECUTE {_literal(_update(info, name, "$1", home))} USING ts;{moved}
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


def row_trigger_of(info: TableInfo) -> str:
    """The name of the earlier releases' single row trigger, replaced by `install`."""
    return trigger_name("sync_clock", info.name)


def trigger_names(info: TableInfo) -> list[str]:
    return [trigger_name("sync_clock", info.name, s) for s in (*EVENTS, "_key")]


def partitions_of(conn: Connection, info: TableInfo) -> list[str]:
    """Every partition of the table (none if it is not partitioned), each a quoted, qualified name."""
    return list(conn.execute(_PARTITIONS, {"t": _q(info.name)}).scalars())


def gaps(conn: Connection, info: TableInfo) -> list[str]:
    """The table or partitions (quoted, qualified names) whose writes would escape the capture: a statement
    trigger missing or disabled there (a partition created after init-master, a trigger a DBA dropped or
    switched off). The key trigger is a row trigger, which PostgreSQL clones onto every partition, even
    one created later: a partition without it had it dropped."""
    return list(conn.execute(_UNCAPTURED, {"t": _q(info.name), "names": trigger_names(info)}).scalars())


def install(conn: Connection, info: TableInfo) -> None:
    """Create or replace the function and the triggers; drops the earlier releases' row trigger, so that
    init-master upgrades a master initialised by them."""
    table = _q(info.name)
    partitioned = conn.execute(_IS_PARTITIONED, {"t": table}).scalar_one()
    function = _q(function_of(info))
    # The sync tables are named with their schema (init-master's): the master's own applications may write
    # with a search_path that lacks it (a table written as `sales.orders`), and the function runs with the
    # writer's. Operators and types still resolve as the writer's statement does.
    home = _q(conn.execute(sa.select(sa.func.current_schema())).scalar_one()) + "."
    body = dollar_quoted(function_body(info, home, partitioned))
    # The writer's planner settings must not reach the capture's own queries: the load switches hash and
    # merge joins off for its staged statements (postgresql_staging), which left the pairing of a 60,000-row
    # update's old and new rows to a nested loop (minutes). The function's SET restores them for its run.
    run_ddl(
        conn,
        f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql "
        f"SET enable_hashjoin = on SET enable_mergejoin = on AS {body}",
    )
    run_ddl(conn, f"DROP TRIGGER IF EXISTS {_q(row_trigger_of(info))} ON {table}")
    *statement_triggers, key_trigger = trigger_names(info)
    for target in (table, *partitions_of(conn, info)):
        for trigger, event in zip(statement_triggers, EVENTS.values(), strict=True):
            run_ddl(conn, f"DROP TRIGGER IF EXISTS {_q(trigger)} ON {target}")
            run_ddl(
                conn,
                f"CREATE TRIGGER {_q(trigger)} AFTER {event} ON {target} {REFERENCING[event]} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {function}()",
            )
    # A row trigger on a partitioned table is cloned onto its partitions by PostgreSQL itself.
    key_changed = " OR ".join(differs_sql(info, "OLD", "NEW", c) for c in info.pk)
    run_ddl(conn, f"DROP TRIGGER IF EXISTS {_q(key_trigger)} ON {table}")
    run_ddl(
        conn,
        f"CREATE TRIGGER {_q(key_trigger)} AFTER UPDATE ON {table} "
        f"FOR EACH ROW WHEN ({key_changed}) EXECUTE FUNCTION {function}()",
    )


def remove(conn: Connection, info: TableInfo) -> None:
    table = _q(info.name)
    *statement_triggers, key_trigger = trigger_names(info)
    for target in (table, *partitions_of(conn, info)):
        for trigger in statement_triggers:
            run_ddl(conn, f"DROP TRIGGER IF EXISTS {_q(trigger)} ON {target}")
    for trigger in (key_trigger, row_trigger_of(info)):
        run_ddl(conn, f"DROP TRIGGER IF EXISTS {_q(trigger)} ON {table}")
    run_ddl(conn, f"DROP FUNCTION IF EXISTS {_q(function_of(info))}()")
