"""The master's change capture writes exactly the field clock and tombstones it always meant, whatever form
the write takes: multi-row statements (INSERT … SELECT, UPDATE touching different columns per row, DELETE
of many rows), per-row statements, keys that change, composite keys with a text-carried column (json),
partitioned tables written through the table or straight into a partition. PostgreSQL captures per
statement (transition tables), SQLite and MariaDB per row; the clock rows must be the same.

Clock rows are compared as sets of (row key, column) with the key's parts split at KEY_SEPARATOR;
tombstones as {row key: image}.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync_pipeline.engine import store
from sync_pipeline.engine.dialects import impl_for
from sync_pipeline.engine.master import connect_master, init_master
from sync_pipeline.engine.queries import list_conflicts
from sync_pipeline.engine.schema import KEY_SEPARATOR, reflect_tables
from sync_pipeline.engine.session import run_sync
from sync_pipeline.engine.settings import parse_settings
from sync_pipeline_tests.conftest import fresh_master_url
from sync_pipeline_tests.helpers import TABLES, make_master, make_replica, pause, replica_engine, row
from sync_pipeline_tests.masters import backend_on_all_masters  # noqa: F401 - `backend` over all three masters

P = TABLES["parent"]
# The triggers in the test's own schema (other schemas of the same database belong to other tests).
OWN_TRIGGERS = (
    "pg_trigger JOIN pg_class ON pg_class.oid = tgrelid "
    "WHERE NOT tgisinternal AND relnamespace = CAST(current_schema() AS regnamespace)"
)
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(\d{3})?$")  # SQLite: milliseconds


def _item(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "item",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("a", sa.String(20)),
        sa.Column("b", sa.Integer),
        sa.Column("c", sa.String(20)),
    )


def _master(url: str, *tables: str, ddl: list[str] | None = None) -> Engine:
    """A master with `item` (4 rows) or the tables `ddl` creates, captured by init-master; no clock rows yet."""
    engine = connect_master(url, must_exist=False)
    with engine.begin() as conn:
        if ddl is None:
            item = _item(sa.MetaData())
            item.create(conn)
            conn.execute(sa.insert(item), [{"id": i, "a": f"a{i}", "b": i, "c": f"c{i}"} for i in range(1, 5)])
        else:
            for statement in ddl:
                conn.exec_driver_sql(statement)
    names = tables or ("item",)
    modules = "".join(f"      {n}: {{}}\n" for n in names)
    init_master(engine, parse_settings(f"modules:\n  core:\n    policy: master_wins\n    tables:\n{modules}", "t.yaml"))
    _forget(engine)
    return engine


def _forget(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.delete(store.sync_field_clock))
        conn.execute(sa.delete(store.sync_tombstone))


def _clock(engine: Engine, table: str = "item") -> set[tuple[Any, ...]]:
    c = store.sync_field_clock
    with engine.connect() as conn:
        found = conn.execute(sa.select(c.c.row_key, c.c.column_name, c.c.changed_at).where(c.c.table_name == table))
        rows = found.all()
    assert all(TIME.match(r.changed_at) for r in rows), rows
    return {(*r.row_key.split(KEY_SEPARATOR), r.column_name) for r in rows}


def _tombstones(engine: Engine, table: str = "item") -> dict[str, dict[str, Any]]:
    t = store.sync_tombstone
    with engine.connect() as conn:
        rows = conn.execute(sa.select(t).where(t.c.table_name == table)).all()
    assert all(TIME.match(r.deleted_at) for r in rows), rows
    return {r.row_key: json.loads(r.row_image) for r in rows}


def _run(engine: Engine, *statements: str) -> None:
    with engine.begin() as conn:
        for statement in statements:
            conn.exec_driver_sql(statement)


def test_one_update_of_many_rows_records_each_rows_changed_columns(master_url: str) -> None:
    engine = _master(master_url)
    _run(
        engine,
        "UPDATE item SET a = CASE WHEN id = 1 THEN 'new' ELSE a END, "
        "b = CASE WHEN id IN (2, 3) THEN 0 ELSE b END, c = CASE WHEN id = 3 THEN NULL ELSE c END",
    )
    assert _clock(engine) == {("1", "a"), ("2", "b"), ("3", "b"), ("3", "c")}  # row 4: written, unchanged
    assert _tombstones(engine) == {}


def test_per_row_statements_record_the_same_clock(master_url: str) -> None:
    engine = _master(master_url)
    item = _item(sa.MetaData())
    with engine.begin() as conn:  # executemany, as a per-row load writes
        conn.execute(
            sa.update(item).where(item.c.id == sa.bindparam("k")).values(a=sa.bindparam("v")),
            [{"k": 1, "v": "new"}, {"k": 2, "v": "a2"}, {"k": 3, "v": None}],
        )
        conn.execute(sa.insert(item), [{"id": 7, "a": "x"}, {"id": 8, "a": None}])
        conn.execute(sa.delete(item).where(item.c.id == sa.bindparam("k")), [{"k": 4}, {"k": 8}])
    assert _clock(engine) == {("1", "a"), ("3", "a"), ("7", "*"), ("8", "*"), ("4", "*")}
    assert _tombstones(engine) == {
        "4": {"id": 4, "a": "a4", "b": 4, "c": "c4"},
        "8": {"id": 8, "a": None, "b": None, "c": None},
    }


def test_insert_select_and_delete_of_many_rows(master_url: str) -> None:
    engine = _master(master_url)
    _run(engine, "INSERT INTO item (id, a, b, c) SELECT id + 10, a, b, NULL FROM item WHERE id <= 3")
    assert _clock(engine) == {("11", "*"), ("12", "*"), ("13", "*")}
    _forget(engine)
    _run(engine, "DELETE FROM item WHERE id IN (2, 3, 12)")
    assert _clock(engine) == {("2", "*"), ("3", "*"), ("12", "*")}
    assert _tombstones(engine) == {
        "2": {"id": 2, "a": "a2", "b": 2, "c": "c2"},
        "3": {"id": 3, "a": "a3", "b": 3, "c": "c3"},
        "12": {"id": 12, "a": "a2", "b": 2, "c": None},
    }


def test_update_that_changes_the_key_marks_old_and_new_key_changed_in_every_field(tmp_path: Path) -> None:
    """PostgreSQL pairs a statement's old and new rows by key: a key that changed has no partner, and its
    old and new keys are '*' (the row trigger before wrote only the changed columns under the new key)."""
    with fresh_master_url("postgresql", tmp_path) as url:
        engine = _master(url)
        _run(engine, "UPDATE item SET id = id + 10, c = 'moved' WHERE id >= 3")
        assert _clock(engine) == {("3", "*"), ("13", "*"), ("4", "*"), ("14", "*")}
        assert _tombstones(engine) == {}  # not a delete: a table without partitions keeps no image of it


def test_a_bulk_update_after_single_row_ones_under_the_loads_join_settings(tmp_path: Path) -> None:
    """The pairing of an UPDATE's rows is planned for each statement (EXECUTE: a plan cached after
    single-row updates paired 10,000 rows by a nested loop), and with the planner's own join settings,
    which the function sets for its run (the load switches hash and merge joins off for its statements):
    the clock is right, and the function carries what keeps it fast."""
    with fresh_master_url("postgresql", tmp_path) as url:
        engine = _master(url)
        with engine.connect() as conn:
            for key in (1, 2, 1, 2, 1, 2):  # past PL/pgSQL's five custom plans
                with conn.begin():
                    conn.exec_driver_sql(f"UPDATE item SET b = b + 1 WHERE id = {key}")
            with conn.begin():
                conn.execute(sa.select(sa.func.set_config("enable_hashjoin", "off", True)))
                conn.execute(sa.select(sa.func.set_config("enable_mergejoin", "off", True)))
                conn.exec_driver_sql("UPDATE item SET c = c || 'x' WHERE id >= 2")
            config, source = conn.execute(
                sa.text(
                    "SELECT proconfig, prosrc FROM pg_proc WHERE proname LIKE 'sync_clock_fn%' "
                    "AND pronamespace = CAST(current_schema() AS regnamespace)"
                )
            ).one()
        assert _clock(engine) == {("1", "b"), ("2", "b"), ("2", "c"), ("3", "c"), ("4", "c")}
        assert set(config) == {"enable_hashjoin=on", "enable_mergejoin=on"}
        assert "EXECUTE" in source


def test_keys_that_swap_are_each_changed_in_every_field(tmp_path: Path) -> None:
    """Under a deferrable key two rows can swap keys in one statement: the key sets before and after are
    equal, so pairing by key would compare different rows. The row trigger on key changes marks both."""
    ddl = [
        "CREATE TABLE item (id integer PRIMARY KEY DEFERRABLE INITIALLY IMMEDIATE, a text, b integer, c text)",
        "INSERT INTO item VALUES (1, 'same', 1, 'c1'), (2, 'same', 2, 'c2'), (3, 'x', 3, 'c3')",
    ]
    with fresh_master_url("postgresql", tmp_path) as url:
        engine = _master(url, "item", ddl=ddl)
        _run(engine, "UPDATE item SET id = 3 - id WHERE id IN (1, 2)")
        # Pairing by key alone would give (1, b), (1, c), (2, b), (2, c): no '*'.
        assert {("1", "*"), ("2", "*")} <= _clock(engine)
        assert {k for k, _ in _clock(engine)} == {"1", "2"}


def test_composite_key_and_a_column_carried_as_text(tmp_path: Path) -> None:
    """json has no equality operator: compared as text, so a change of spacing alone is a change (as the
    row trigger recorded it), the same text is none."""
    ddl = [
        "CREATE TABLE doc (code text, version integer, body json, note text, PRIMARY KEY (code, version))",
        """INSERT INTO doc VALUES ('A', 1, '{"k":1}', 'n'), ('A', 2, '{"k":2}', 'n'), ('B', 1, '[]', 'n')""",
    ]
    with fresh_master_url("postgresql", tmp_path) as url:
        engine = _master(url, "doc", ddl=ddl)
        _run(
            engine,
            """UPDATE doc SET body = CASE version WHEN 1 THEN CAST('{"k": 1}' AS json) ELSE body END, """
            "note = CASE code WHEN 'B' THEN 'm' ELSE note END",
        )
        assert _clock(engine, "doc") == {("A", "1", "body"), ("B", "1", "body"), ("B", "1", "note")}
        _forget(engine)
        _run(
            engine,
            """INSERT INTO doc VALUES ('C', 1, '{}', NULL), ('A', 2, '{"k":3}', 'n') """
            "ON CONFLICT (code, version) DO UPDATE SET body = EXCLUDED.body",
        )
        assert _clock(engine, "doc") == {("C", "1", "*"), ("A", "2", "body")}
        _forget(engine)
        _run(engine, "DELETE FROM doc WHERE code = 'A'")
        assert _clock(engine, "doc") == {("A", "1", "*"), ("A", "2", "*")}
        images = _tombstones(engine, "doc")
        assert images == {
            f"A{KEY_SEPARATOR}1": {"code": "A", "version": 1, "body": {"k": 1}, "note": "n"},
            f"A{KEY_SEPARATOR}2": {"code": "A", "version": 2, "body": {"k": 3}, "note": "n"},
        }


def test_partitioned_table_through_the_table_and_straight_into_a_partition(tmp_path: Path) -> None:
    ddl = [
        "CREATE TABLE sale (region text, id integer, qty integer, PRIMARY KEY (region, id)) PARTITION BY LIST (region)",
        "CREATE TABLE sale_eu PARTITION OF sale FOR VALUES IN ('eu')",
        "CREATE TABLE sale_us PARTITION OF sale FOR VALUES IN ('us') PARTITION BY RANGE (id)",
        "CREATE TABLE sale_us_low PARTITION OF sale_us FOR VALUES FROM (0) TO (100)",
        "CREATE TABLE sale_us_high PARTITION OF sale_us FOR VALUES FROM (100) TO (1000)",
        "INSERT INTO sale VALUES ('eu', 1, 1), ('eu', 2, 2), ('us', 1, 1), ('us', 150, 1)",
    ]
    sep = KEY_SEPARATOR
    with fresh_master_url("postgresql", tmp_path) as url:
        engine = _master(url, "sale", ddl=ddl)
        _run(engine, "UPDATE sale SET qty = qty + 1 WHERE id = 1")  # rows in two partitions, one statement
        assert _clock(engine, "sale") == {("eu", "1", "qty"), ("us", "1", "qty")}
        _forget(engine)
        _run(  # straight into (sub-)partitions: statement triggers are not inherited, each has its own
            engine,
            "INSERT INTO sale_eu VALUES ('eu', 3, 3)",
            "UPDATE sale_us_high SET qty = 9",
            "DELETE FROM sale_us_low WHERE id = 1",
        )
        assert _clock(engine, "sale") == {("eu", "3", "*"), ("us", "150", "qty"), ("us", "1", "*")}
        assert _tombstones(engine, "sale") == {f"us{sep}1": {"region": "us", "id": 1, "qty": 2}}
        _forget(engine)
        # A row that moves into another partition: the old key is gone (its tombstone, as the row
        # triggers' DELETE + INSERT wrote it), the new key is new.
        _run(engine, "UPDATE sale SET region = 'us' WHERE region = 'eu' AND id = 2")
        assert _clock(engine, "sale") == {("eu", "2", "*"), ("us", "2", "*")}
        assert _tombstones(engine, "sale") == {f"eu{sep}2": {"region": "eu", "id": 2, "qty": 2}}
        infos = reflect_tables(engine, ["sale"])
        with engine.begin() as conn:
            impl_for(conn).remove_capture(conn, infos["sale"])
            left = conn.exec_driver_sql(f"SELECT count(*) FROM {OWN_TRIGGERS}").scalar_one()
        assert left == 0


def test_init_master_replaces_the_earlier_row_trigger_and_remove_drops_everything(tmp_path: Path) -> None:
    """A master initialised by the release with one row trigger per table: init-master again replaces it
    (were it left, every write would be captured twice, the second time as a marked column)."""
    with fresh_master_url("postgresql", tmp_path) as url:
        engine = _master(url)
        _run(
            engine,
            "CREATE OR REPLACE FUNCTION sync_clock_fn_item() RETURNS trigger LANGUAGE plpgsql AS "
            "$f$ BEGIN INSERT INTO sync_field_clock VALUES ('item', 'old', 'row trigger', 'x') "
            "ON CONFLICT DO NOTHING; RETURN NULL; END $f$",
            "CREATE TRIGGER sync_clock_item AFTER INSERT OR UPDATE OR DELETE ON item "
            "FOR EACH ROW EXECUTE FUNCTION sync_clock_fn_item()",
        )
        init_master(
            engine,
            parse_settings("modules:\n  core:\n    policy: master_wins\n    tables:\n      item: {}\n", "t.yaml"),
        )
        _forget(engine)
        _run(engine, "UPDATE item SET b = 0 WHERE id <= 2")
        assert _clock(engine) == {("1", "b"), ("2", "b")}
        with engine.begin() as conn:
            triggers = set(conn.exec_driver_sql(f"SELECT tgname FROM {OWN_TRIGGERS}").scalars())
            assert triggers == {
                "sync_clock_item_ins",
                "sync_clock_item_upd",
                "sync_clock_item_del",
                "sync_clock_item_key",
            }
            impl_for(conn).remove_capture(conn, reflect_tables(conn, ["item"])["item"])
            assert not conn.exec_driver_sql(f"SELECT tgname FROM {OWN_TRIGGERS}").all()
            assert not conn.exec_driver_sql(
                "SELECT proname FROM pg_proc WHERE pronamespace = CAST(current_schema() AS regnamespace)"
            ).all()


def test_master_bulk_update_after_checkout_is_a_conflict_field_by_field(master_url: str, tmp_path: Path) -> None:
    """Detection reads the clock: a field the master wrote after the checkout is a master change even when
    a second statement set it back to its checkout value (only the clock can tell), and a field the master
    did not write is none. Every master write here is one statement over several rows."""
    engine = make_master(master_url, "master_wins")
    replica = make_replica(engine, tmp_path)
    pause()
    with engine.begin() as conn:
        conn.execute(sa.update(P).where(P.c.id.in_([1, 2, 3])).values(city="Moved"))
        conn.execute(
            sa.update(P)
            .where(P.c.id.in_([1, 2, 3]))
            .values(city="Base", name=sa.case((P.c.id == 2, "Master name"), else_=P.c.name))
        )
    pause()
    with replica_engine(replica).begin() as local:
        local.execute(sa.update(P).where(P.c.id == 1).values(name="Local 1"))  # master did not write name of 1
        local.execute(sa.update(P).where(P.c.id == 2).values(name="Local 2"))  # master wrote name of 2
        local.execute(sa.update(P).where(P.c.id == 3).values(city="Local 3"))  # city of 3: written, set back
        local.execute(sa.update(P).where(P.c.id == 4).values(city="Local 4"))  # master did not write row 4

    result = run_sync(engine, replica)

    assert result.status == "done", result
    conflicts = list_conflicts(engine, result.session_id)
    found = {
        (c["key"]["id"], c["kind"], tuple((f["name"], f["base"], f["master"]) for f in c["fields"])) for c in conflicts
    }
    # Row 3's city: base and master value equal ('Base'), yet the master wrote it after the checkout.
    assert found == {
        (2, "update_update", (("name", "P2", "Master name"),)),
        (3, "update_update", (("city", "Base", "Base"),)),
    }
    assert row(engine, "parent", id=1)["name"] == "Local 1"
    assert row(engine, "parent", id=2)["name"] == "Master name"
    assert row(engine, "parent", id=3)["city"] == "Base"
    assert row(engine, "parent", id=4)["city"] == "Local 4"
