"""Trigger DDL is inert whatever the identifiers (issue 11, point 7), on every master.

A table whose name and many columns are hostile (a dollar-quote tag with SQL after it, quotes, semicolons,
percent signs, backslashes, unicode, spaces, reserved words, names as long as the database allows, and a
double quote past the 60th column, where SQLite's change log splits its json_object into chunks): the
change log captures every column, the master gets every value, and no object but ours is created.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sync_pipeline.engine import store
from sync_pipeline.engine.master import connect_master, init_master
from sync_pipeline.engine.session import run_sync
from sync_pipeline.engine.settings import parse_settings
from sync_pipeline_tests.helpers import make_replica, pause
from sync_pipeline_tests.masters import backend_on_all_masters  # noqa: F401 (the `backend` fixture)

MARK = uuid.uuid4().hex[:8]
INJECTION = f"c$sync$;CREATE TABLE pwned_{MARK}();SELECT $sync$"
HOSTILE = [  # the first 5 go into SQLite's first json_object chunk, the others past the 60th column
    INJECTION,
    "it's",
    "semi;colon",
    "with space",
    'first"quote',
    'quote"inside',
    '"',
    '""',
    "select",
    "ünïcödé ✓",
    "%s",
    "a%b",
    "%(x)s",
    "$1",
    "$$",
    'past "120"',
    "x$sync",
    "sync$",
    "-- dash",
    "/*c*/",
    "back\\slash",
    "[bracket]",
    "`tick`",
    "a.b",
    "$.x",
    "END",
    f"b`;CREATE TABLE pwned_{MARK}(i INT);--x",  # a backtick-quoted name (MariaDB) ended early
]
TABLE = f'tbl "x" $sync$; --{MARK}'
KEY = 'key "id" $sync$'


def _column_names(backend: str) -> list[str]:
    # PostgreSQL keeps 63 bytes of a name, MariaDB allows 64 characters.
    long_name = "l" * {"postgresql": 63, "mariadb": 64}.get(backend, 300)
    filler = [f"f{i}" for i in range(130)]
    # Hostile names in the first chunk of 60, past the 60th and past the 120th column.
    return [*HOSTILE[:5], *filler[:60], *HOSTILE[5:15], *filler[60:], *HOSTILE[15:], long_name]


def _settings_yaml() -> str:
    return f"modules:\n  core:\n    policy: manual\n    tables:\n      {json.dumps(TABLE)}: {{}}\n"


def _objects(engine: sa.Engine) -> dict[str, set[str]]:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            found: dict[str, set[str]] = {}
            for kind, name in conn.exec_driver_sql("SELECT type, name FROM sqlite_master"):
                found.setdefault(kind, set()).add(name)
            return found
        if engine.dialect.name in ("mysql", "mariadb"):
            tables = conn.exec_driver_sql(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = DATABASE()"
            ).scalars()
            triggers = conn.exec_driver_sql(
                "SELECT trigger_name FROM information_schema.triggers WHERE trigger_schema = DATABASE()"
            ).scalars()
            return {"table": set(tables), "trigger": set(triggers)}
        tables = conn.exec_driver_sql(
            "SELECT relname FROM pg_class WHERE relnamespace = CAST(current_schema() AS regnamespace) "
            "AND relkind IN ('r', 'v', 'm', 'p', 'f')"
        ).scalars()
        functions = conn.exec_driver_sql(
            "SELECT proname FROM pg_proc WHERE pronamespace = CAST(current_schema() AS regnamespace)"
        ).scalars()
        return {"table": set(tables), "function": set(functions)}


def test_hostile_identifiers_are_captured_synced_and_inert(backend: str, master_url: str, tmp_path: Path) -> None:
    engine = connect_master(master_url, must_exist=False)
    if backend == "postgresql":
        # As in the report: without body checks, an ended function body would run what follows it.
        @sa.event.listens_for(engine, "connect")
        def _no_body_checks(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET check_function_bodies = off")
            dbapi_connection.commit()

    names = _column_names(backend)
    assert len(set(names)) == len(names)
    metadata = sa.MetaData()
    table = sa.Table(
        TABLE,
        metadata,
        sa.Column(KEY, sa.Integer, primary_key=True, autoincrement=False),
        *[sa.Column(n, sa.String(80)) for n in names],
    )
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(table), [{KEY: k, **{n: f"base {k} {i}" for i, n in enumerate(names)}} for k in (1, 2)])
    init_master(engine, parse_settings(_settings_yaml(), "hostile.yaml"))

    objects = _objects(engine)
    assert not any(f"pwned_{MARK}" in name for names_ in objects.values() for name in names_)
    # On PostgreSQL the signing key's table lives in a schema of its own (engine/signing_key.py).
    key_elsewhere = {"sync_signing_key"} if backend == "postgresql" else set()
    assert objects["table"] - {"sqlite_sequence"} == {TABLE, *store.SYNC_TABLES} - key_elsewhere
    if backend == "postgresql":
        assert len(objects["function"]) == 1 and next(iter(objects["function"])).startswith("sync_clock_fn")
    else:
        assert all(t.startswith("sync_clock") for t in objects["trigger"])

    replica = make_replica(engine, tmp_path)
    pause()
    updated = {n: f"local {i} ' \" ; $sync$ %s \\" for i, n in enumerate(names)}
    inserted = {KEY: 3, **{n: f"new {i}" for i, n in enumerate(names)}}
    conn = sqlite3.connect(replica)
    with conn:
        quoted = ", ".join('"' + n.replace('"', '""') + '" = ?' for n in names)
        table_sql = '"' + TABLE.replace('"', '""') + '"'
        key_sql = '"' + KEY.replace('"', '""') + '"'
        conn.execute(f"UPDATE {table_sql} SET {quoted} WHERE {key_sql} = 1", list(updated.values()))
        columns = ", ".join('"' + n.replace('"', '""') + '"' for n in inserted)
        conn.execute(
            f"INSERT INTO {table_sql} ({columns}) VALUES ({', '.join('?' * len(inserted))})", list(inserted.values())
        )
        conn.execute(f"DELETE FROM {table_sql} WHERE {key_sql} = 2")
    log = {op: (old, new) for op, old, new in conn.execute("SELECT op, old_values, new_values FROM _sync_log")}
    conn.close()

    # The change log captures every column of every operation.
    every = {KEY, *names}
    assert json.loads(log["U"][1]) == {KEY: 1, **updated}
    assert json.loads(log["U"][0]) == {KEY: 1, **{n: f"base 1 {i}" for i, n in enumerate(names)}}
    assert json.loads(log["I"][1]) == inserted
    assert set(json.loads(log["D"][0])) == every

    result = run_sync(engine, replica)

    assert result.status == "done"
    with engine.connect() as master:
        rows = {r[KEY]: dict(r) for r in master.execute(sa.select(table)).mappings()}
        clocked = set(
            master.execute(
                sa.select(store.sync_field_clock.c.column_name).where(
                    store.sync_field_clock.c.table_name == TABLE, store.sync_field_clock.c.row_key == "1"
                )
            ).scalars()
        )
        (image,) = master.execute(
            sa.select(store.sync_tombstone.c.row_image).where(store.sync_tombstone.c.table_name == TABLE)
        ).scalars()
    assert rows == {1: {KEY: 1, **updated}, 3: inserted}  # the master got every value
    assert clocked == set(names)  # the master's capture saw the load change every column
    assert json.loads(image) == {KEY: 2, **{n: f"base 2 {i}" for i, n in enumerate(names)}}
    assert _objects(engine) == objects  # and created nothing else
