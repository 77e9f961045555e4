"""A PostgreSQL master whose module tables live in several schemas, put on the connection's search_path
(`?options=-csearch_path%3Dsales,people`): the sync tables go into the first, the tables keep theirs. The
master's own applications write with their own search_path, naming tables with their schema; their writes
must reach the field clock and the tombstones all the same (the capture names the sync tables with their
schema), and must keep working at all (they failed with `relation "sync_field_clock" does not exist`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from sync_pipeline.cli import main
from sync_pipeline.engine.master import connect_master, init_master
from sync_pipeline.engine.queries import list_conflicts
from sync_pipeline.engine.settings import parse_settings
from sync_pipeline_tests.conftest import PG_URL, require_postgres
from sync_pipeline_tests.helpers import pause, replica_sql

SETTINGS = "modules:\n  crm:\n    policy: master_wins\n    tables:\n      person: {}\n      orders: {}\n"


@pytest.fixture
def two_schemas() -> Iterator[tuple[str, str, str]]:
    """(master url, schema of the sync tables and `orders`, schema of `person`), dropped afterwards."""
    require_postgres()
    sales, people = f"sales_{uuid.uuid4().hex[:8]}", f"people_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        for statement in (
            f"CREATE SCHEMA {sales}",
            f"CREATE SCHEMA {people}",
            f"CREATE TABLE {people}.person (id serial PRIMARY KEY, name text NOT NULL)",
            f"CREATE TABLE {sales}.orders (id serial PRIMARY KEY, person_id integer REFERENCES {people}.person, "
            "qty integer)",
            f"INSERT INTO {people}.person (name) VALUES ('Ada'), ('Bob')",
            f"INSERT INTO {sales}.orders (person_id, qty) VALUES (1, 1), (2, 2)",
        ):
            conn.exec_driver_sql(statement)
    url = sa.engine.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={sales},{people}"})
    try:
        yield url.render_as_string(hide_password=False), sales, people
    finally:
        from sync_pipeline_tests.conftest import drop_key_store

        with admin.begin() as conn:
            for schema in (sales, people):
                conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
            drop_key_store(conn, sales)
        admin.dispose()


def _application(statement: str) -> None:
    """A write by the master's own application: default search_path, tables named with their schema."""
    engine = sa.create_engine(PG_URL)
    with engine.begin() as conn:
        conn.exec_driver_sql(statement)
    engine.dispose()


def _rows(url: str, query: str) -> list[tuple]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        found = [tuple(r) for r in conn.exec_driver_sql(query)]
    engine.dispose()
    return found


def test_tables_in_two_schemas_sync_and_the_applications_writes_are_captured(
    two_schemas: tuple[str, str, str], tmp_path: Path
) -> None:
    url, sales, people = two_schemas
    init_master(connect_master(url), parse_settings(SETTINGS, "crm.yaml"))
    replica = tmp_path / "crm.db"
    checkout = CliRunner().invoke(main, ["checkout", "--master", url, "--owner", "ana", "--replica", str(replica)])
    assert checkout.exit_code == 0, checkout.output
    pause()
    _application(f"UPDATE {people}.person SET name = 'Bob (master)' WHERE id = 2")
    _application(f"DELETE FROM {sales}.orders WHERE id = 1")
    _application(f"INSERT INTO {people}.person (name) VALUES ('Cy')")
    assert _rows(url, "SELECT table_name, row_key, column_name FROM sync_field_clock ORDER BY 1, 2, 3") == [
        ("orders", "1", "*"),
        ("person", "2", "name"),
        ("person", "3", "*"),
    ]
    assert _rows(url, "SELECT table_name, row_key FROM sync_tombstone") == [("orders", "1")]
    pause()
    replica_sql(
        replica,
        "UPDATE person SET name = 'Bob (local)' WHERE id = 2",
        "INSERT INTO person (name) VALUES ('Dee')",
        "INSERT INTO orders (person_id, qty) VALUES ((SELECT max(id) FROM person), 7)",
        "UPDATE orders SET qty = 9 WHERE id = 1",
    )

    result = CliRunner().invoke(main, ["sync", "--master", url, "--replica", str(replica), "--without-dagster"])

    assert result.exit_code == 0, result.output
    conflicts = list_conflicts(connect_master(url))
    assert {(c["table"], c["kind"]) for c in conflicts} == {("person", "update_update"), ("orders", "update_delete")}
    people_rows = _rows(url, f"SELECT id, name FROM {people}.person ORDER BY id")
    assert people_rows[:3] == [(1, "Ada"), (2, "Bob (master)"), (3, "Cy")]
    assert [name for _, name in people_rows[3:]] == ["Dee"]
    dee = people_rows[3][0]
    assert _rows(url, f"SELECT person_id, qty FROM {sales}.orders ORDER BY id") == [(2, 2), (dee, 7)]
    _application(f"INSERT INTO {people}.person (name) VALUES ('after the sync')")  # the sequence moved past Dee
