"""The replica file from the laptop is hostile input: the master's own record decides (issue 11.1, 11.4, 11.5).

Each attack is made as an attacker would, with sqlite3 on the replica file (and, for 11.1, with the
master's signing key in hand). Each must end in exit 2 with a message and a fix, quickly, with the
master byte for byte as it was.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sqlite3
import stat
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from sync_pipeline.cli import main
from sync_pipeline.engine import replica_guard, store
from sync_pipeline.engine.checkout import replica_metadata
from sync_pipeline.engine.errors import ReplicaError
from sync_pipeline.engine.manifest import read_manifest, schema_snapshot
from sync_pipeline.engine.master import default_master_url, init_master
from sync_pipeline.engine.replica import open_replica
from sync_pipeline.engine.schema import reflect_tables
from sync_pipeline.engine.session import run_sync
from sync_pipeline.engine.settings import parse_settings
from sync_pipeline.engine.signing_key import KEY_TABLE, key_schema_name, require_signing_key
from sync_pipeline_tests.conftest import PG_URL
from sync_pipeline_tests.helpers import TABLES, make_master, make_replica, master_state, replica_engine

P, C = TABLES["parent"], TABLES["child"]

TWO_MODULES = (
    "modules:\n"
    "  core:\n"
    "    policy: manual\n"
    "    tables:\n"
    "      parent: {natural_key: [email]}\n"
    "      child: {}\n"
    "  hr:\n"
    "    policy: manual\n"
    "    tables:\n"
    "      tagged: {}\n"
)


def _sync(master_url: str, replica: Path) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["sync", "--master", master_url, "--replica", str(replica)])
    return result.exit_code, result.output


def _sql(replica: Path, *statements: str, params: tuple[object, ...] = ()) -> None:
    conn = sqlite3.connect(replica)
    for statement in statements:
        conn.execute(statement, params) if params else conn.execute(statement)
    conn.commit()
    conn.close()


def _set_manifest(replica: Path, key: str, raw_value: object) -> None:
    """Write a manifest value as raw text (not necessarily JSON made by the product)."""
    _sql(replica, "UPDATE _sync_manifest SET value = ? WHERE key = ?", params=(raw_value, key))


def _edited_replica(engine: sa.Engine, folder: Path, modules: list[str] | None = None) -> Path:
    replica = make_replica(engine, folder, modules=modules)
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(P).where(P.c.id == 1).values(city="Local"))
    return replica


def _assert_refused(master_url: str, engine: sa.Engine, replica: Path, message: str) -> str:
    before = master_state(engine)
    code, output = _sync(master_url, replica)
    assert code == 2, output
    assert "error: " in output and "fix:" in output, output
    assert re.search(message, output), output
    assert master_state(engine) == before
    return output


# ------------------------------------------------------------------------------------------------
# 11.1 The master's record decides: scope and policy never come from the file
# ------------------------------------------------------------------------------------------------


def _resign(engine: sa.Engine, replica: Path, change: Callable[[dict[str, object]], None]) -> None:
    """What a worker holding the signing key does: edit the manifest's signed fields and sign again."""
    conn = sqlite3.connect(replica, isolation_level=None)
    manifest = read_manifest(conn, replica)
    fields = {k: getattr(manifest, k) for k in ("owner", "modules", "checked_out_at", "settings", "schema")}
    change(fields)
    for name, value in fields.items():
        setattr(manifest, name, value)
    manifest.sign(require_signing_key(engine, manifest.master_id))
    for name in (*fields, "signature"):
        conn.execute("UPDATE _sync_manifest SET value = ? WHERE key = ?", (json.dumps(getattr(manifest, name)), name))
    conn.close()


def _widen_to_hr_and_local_wins(engine: sa.Engine, replica: Path) -> Callable[[dict[str, object]], None]:
    """Add the module `hr` (not checked out) with a row of its own, and turn `manual` into `local_wins`."""
    tagged = reflect_tables(engine, ["tagged"])
    table = replica_metadata(tagged).tables["tagged"]
    conn = sqlite3.connect(replica)
    conn.execute(str(sa.schema.CreateTable(table).compile(dialect=sa.dialects.sqlite.dialect())))
    conn.execute("INSERT INTO tagged (code, version, title) VALUES ('HR', 1, 'raise')")
    conn.execute(
        "INSERT INTO _sync_log (table_name, op, row_key, old_values, new_values, changed_at) VALUES "
        '(\'tagged\', \'I\', \'["HR", 1]\', NULL, \'{"code": "HR", "version": 1, "title": "raise", '
        "\"valid_from\": null}', '2026-01-01T00:00:00.000')"
    )
    conn.commit()
    conn.close()

    def change(fields: dict[str, object]) -> None:
        fields["modules"] = ["core", "hr"]
        fields["settings"] = str(fields["settings"]).replace("policy: manual", "policy: local_wins")
        schema = dict(fields["schema"])  # type: ignore[call-overload]
        schema["tables"] = {**schema["tables"], **schema_snapshot(tagged)["tables"]}
        fields["schema"] = schema

    return change


RESIGNED: dict[str, tuple[Callable[[sa.Engine, Path], Callable[[dict[str, object]], None]], str]] = {
    "module added and policy changed": (_widen_to_hr_and_local_wins, "modules .*core, hr in the file.*settings"),
    "policy changed": (
        lambda e, r: lambda f: f.update(settings=str(f["settings"]).replace("manual", "local_wins")),
        "settings",
    ),
    "owner changed": (lambda e, r: lambda f: f.update(owner="Boss"), "owner"),
    "checkout time moved": (lambda e, r: lambda f: f.update(checked_out_at="2999-01-01T00:00:00.000"), "checkout"),
}


@pytest.mark.parametrize("case", list(RESIGNED))
def test_resigned_manifest_is_refused_by_the_masters_record(
    case: str, backend: str, master_url: str, tmp_path: Path
) -> None:
    engine = make_master(master_url, settings=TWO_MODULES)
    replica = _edited_replica(engine, tmp_path, modules=["core"])
    with engine.begin() as m:  # a master edit that `manual` must keep as a conflict
        m.execute(sa.update(P).where(P.c.id == 1).values(city="Master"))
    attack, message = RESIGNED[case]
    _resign(engine, replica, attack(engine, replica))
    output = _assert_refused(master_url, engine, replica, "disagrees with the master's record")
    assert re.search(message, output, re.S), output
    with engine.connect() as m:
        assert m.execute(sa.select(P.c.city).where(P.c.id == 1)).scalar_one() == "Master"


def test_signing_key_is_not_in_sync_meta(backend: str, master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url)
    meta = store.read_meta(engine)
    assert "signing_key" not in meta
    assert re.fullmatch(r"[0-9a-f]{64}", require_signing_key(engine, meta["master_id"]))


def test_an_older_masters_key_moves_out_of_sync_meta_and_stays_valid(
    backend: str, master_url: str, tmp_path: Path
) -> None:
    engine = make_master(master_url)
    replica = _edited_replica(engine, tmp_path)
    meta = store.read_meta(engine)
    key = require_signing_key(engine, meta["master_id"])
    with engine.begin() as m:  # as an older version left it: the key in sync_meta, no key store
        store.write_meta(m, {"signing_key": key})
        schema = None
        if backend == "postgresql":
            schema = key_schema_name(m.execute(sa.select(sa.func.current_schema())).scalar_one())
        key_table = sa.Table(KEY_TABLE, sa.MetaData(), schema=schema)
        m.execute(sa.schema.DropTable(key_table))
    init_master(engine, parse_settings(store.read_meta(engine)["settings"], "again.yaml"))
    assert "signing_key" not in store.read_meta(engine)
    assert require_signing_key(engine, meta["master_id"]) == key
    assert run_sync(engine, replica).status == "done"


def test_a_reporting_role_cannot_read_the_signing_key(tmp_path: Path) -> None:
    """PostgreSQL: a role with SELECT on every table of the master's schema, and default privileges that
    grant it SELECT on every table the sync role creates, still cannot read the key."""
    from sync_pipeline_tests.conftest import fresh_master_url

    role = f"reporting_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(PG_URL)
    with fresh_master_url("postgresql", tmp_path) as url:
        try:
            with admin.begin() as conn:
                conn.exec_driver_sql(f"CREATE ROLE {role} NOLOGIN")
                conn.exec_driver_sql(f"ALTER DEFAULT PRIVILEGES GRANT SELECT ON TABLES TO {role}")
            engine = make_master(url)
            schema = sa.engine.make_url(url).query["options"].split("=", 1)[1]  # type: ignore[union-attr]
            master_id = store.read_meta(engine)["master_id"]
            with engine.begin() as conn:
                conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
                conn.exec_driver_sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
            with engine.connect() as conn:
                conn.exec_driver_sql(f"SET ROLE {role}")
                meta = dict(conn.execute(sa.select(store.sync_meta.c.key, store.sync_meta.c.value)).all())
                assert meta["master_id"] == master_id and "signing_key" not in meta
                key_table = sa.Table(KEY_TABLE, sa.MetaData(), sa.Column("signing_key"), schema=key_schema_name(schema))
                with pytest.raises(sa.exc.ProgrammingError, match="permission denied"):
                    conn.execute(sa.select(key_table.c.signing_key))
                conn.rollback()
            engine.dispose()
        finally:
            with admin.begin() as conn:
                conn.exec_driver_sql(f"ALTER DEFAULT PRIVILEGES REVOKE SELECT ON TABLES FROM {role}")
                conn.exec_driver_sql(f"DROP OWNED BY {role}")
                conn.exec_driver_sql(f"DROP ROLE {role}")
            admin.dispose()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_sync_home_master_and_replicas_are_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a usual umask (022), SYNC_HOME is made 0700, the embedded master and each replica 0600."""
    home = tmp_path / "fresh_home"
    monkeypatch.setenv("SYNC_HOME", str(home))
    old = os.umask(0o022)
    try:
        engine = make_master(default_master_url())
        assert _mode(home) == 0o700
        assert _mode(home / "master.db") == 0o600
        replica = make_replica(engine, home)
        assert _mode(replica) == 0o600
        code, output = _sync(default_master_url(), replica)
        assert code == 0, output
        assert _mode(home / "master.db") == 0o600 and _mode(replica) == 0o600
        # Whatever else lives in SYNC_HOME (Dagster's storage, protocols) is behind its 0700.
        assert _mode(home) == 0o700
    finally:
        os.umask(old)


# ------------------------------------------------------------------------------------------------
# 11.4 The master's retirement is final
# ------------------------------------------------------------------------------------------------


def _status_edited_back_to_open(replica: Path, copy: Path) -> Path:
    _sql(
        replica,
        "UPDATE _sync_manifest SET value = '\"open\"' WHERE key = 'status'",
        *[f"DROP TRIGGER {name}" for name in _freeze_triggers(replica)],
    )
    return replica


def _copy_kept_from_before(replica: Path, copy: Path) -> Path:
    return copy


def _trigger_keeps_it_open(replica: Path, copy: Path) -> Path:
    _sql(
        replica,
        *[f"DROP TRIGGER {name}" for name in _freeze_triggers(replica)],
        "CREATE TRIGGER keep_open AFTER UPDATE ON _sync_manifest BEGIN "
        "UPDATE _sync_manifest SET value = '\"open\"' WHERE key = 'status'; END",
        "UPDATE _sync_manifest SET value = '\"open\"' WHERE key = 'status'",
    )
    return replica


def _freeze_triggers(replica: Path) -> list[str]:
    conn = sqlite3.connect(replica)
    found = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE name LIKE '_sync_frozen%'")]
    conn.close()
    return found


RETIRED: dict[str, Callable[[Path, Path], Path]] = {
    "status edited back to open": _status_edited_back_to_open,
    "copy kept from before the sync": _copy_kept_from_before,
    "trigger that keeps the manifest open": _trigger_keeps_it_open,
}


@pytest.mark.parametrize("case", list(RETIRED))
def test_retired_replica_is_refused_whatever_its_file_says(
    case: str, backend: str, master_url: str, tmp_path: Path
) -> None:
    engine = make_master(master_url)
    replica = _edited_replica(engine, tmp_path)
    copy = tmp_path / "copy-before-sync.db"
    shutil.copy(replica, copy)
    code, output = _sync(master_url, replica)
    assert code == 0, output
    hostile = RETIRED[case](replica, copy)
    _assert_refused(master_url, engine, hostile, "already synchronised and retired|not as checkout made it")
    code, output = _sync(master_url, hostile)  # and again: never "done"
    assert code == 2, output


def test_a_load_committed_before_the_file_was_retired_still_finishes(
    backend: str, master_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The one case where the master says retired and the file does not: the process ended between the
    load's commit and the file's retirement. The next sync retires the file (exit 0), the one after refuses."""
    import sync_pipeline.engine.run_driver as run_driver

    engine = make_master(master_url)
    replica = _edited_replica(engine, tmp_path)

    def ended(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(run_driver, "retire_replica", ended)
    with pytest.raises(KeyboardInterrupt):
        run_sync(engine, replica)
    monkeypatch.undo()
    assert run_sync(engine, replica).status == "done"
    with pytest.raises(ReplicaError, match="already synchronised"):
        run_sync(engine, replica)


# ------------------------------------------------------------------------------------------------
# 11.5 Structure checked before anything is read; reads bounded
# ------------------------------------------------------------------------------------------------

DEEP = "[" * 100_000 + "]" * 100_000


def _nested_json_in_manifest(replica: Path) -> None:
    _set_manifest(replica, "schema", '{"tables": ' + DEEP + "}")


def _nested_json_in_modules(replica: Path) -> None:
    _set_manifest(replica, "modules", DEEP)


def _nested_json_in_log(replica: Path) -> None:
    _sql(
        replica,
        "INSERT INTO _sync_log (table_name, op, row_key, old_values, new_values, changed_at) VALUES "
        "('parent', 'I', '[90]', NULL, ?, '2026-01-01T00:00:00.000')",
        params=('{"id": 90, "name": ' + DEEP + "}",),
    )


def _nested_json_in_log_key(replica: Path) -> None:
    _sql(
        replica,
        "INSERT INTO _sync_log (table_name, op, row_key, old_values, new_values, changed_at) VALUES "
        "('parent', 'I', ?, NULL, '{\"id\": 90, \"name\": \"x\"}', '2026-01-01T00:00:00.000')",
        params=(DEEP,),
    )


def _non_ascii_signature(replica: Path) -> None:
    _set_manifest(replica, "signature", json.dumps("é" * 64, ensure_ascii=False))


def _numeric_signature(replica: Path) -> None:
    _set_manifest(replica, "signature", "12345")


def _module_table_replaced_by_a_view(replica: Path) -> None:
    _sql(
        replica,
        "ALTER TABLE child RENAME TO child_data",
        "CREATE VIEW child AS SELECT * FROM child_data",
    )


def _log_a_recursive_view(replica: Path) -> None:
    _sql(
        replica,
        "DROP TABLE _sync_log",
        "CREATE VIEW _sync_log AS WITH RECURSIVE n(seq) AS (SELECT 1 UNION ALL SELECT seq + 1 FROM n) "
        "SELECT seq, 'parent' AS table_name, 'U' AS op, '[1]' AS row_key, '{}' AS old_values, "
        "'{}' AS new_values, '2026-01-01' AS changed_at FROM n",
    )


def _log_a_view_of_huge_strings(replica: Path) -> None:
    row = (
        "SELECT {seq} AS seq, 'parent' AS table_name, 'U' AS op, '[1]' AS row_key, "
        "printf('%.*c', 400000000, 'x') AS old_values, printf('%.*c', 400000000, 'x') AS new_values, "
        "'2026-01-01' AS changed_at"
    )
    _sql(
        replica,
        "DROP TABLE _sync_log",
        "CREATE VIEW _sync_log AS " + " UNION ALL ".join(row.format(seq=i) for i in (1, 2, 3)),
    )


def _log_with_a_computed_column(replica: Path) -> None:
    _sql(
        replica,
        "DROP TABLE _sync_log",
        "CREATE TABLE _sync_log (seq INTEGER PRIMARY KEY AUTOINCREMENT, table_name TEXT NOT NULL, "
        "op TEXT NOT NULL, row_key TEXT NOT NULL, old_values TEXT, changed_at TEXT NOT NULL, "
        "new_values TEXT AS (printf('%.*c', 400000000, 'x')))",
    )


def _module_table_with_a_computed_column(replica: Path) -> None:
    _sql(replica, "ALTER TABLE parent ADD COLUMN bomb TEXT AS (printf('%.*c', 400000000, 'x'))")


def _module_table_virtual(replica: Path) -> None:
    _sql(
        replica,
        "ALTER TABLE child RENAME TO child_data",
        "CREATE VIRTUAL TABLE child USING rtree(id, parent_id, label)",
    )


def _trigger_on_the_manifest(replica: Path) -> None:
    _sql(
        replica,
        "CREATE TRIGGER keep_open AFTER UPDATE ON _sync_manifest BEGIN "
        "UPDATE _sync_manifest SET value = '\"open\"' WHERE key = 'status'; END",
    )


def _expression_index_on_the_manifest(replica: Path) -> None:
    _sql(replica, "CREATE INDEX slow ON _sync_manifest (length(printf('%.*c', 1000000, value)))")


def _trigger_of_its_own(replica: Path) -> None:
    _sql(replica, "CREATE TRIGGER mine AFTER INSERT ON parent BEGIN DELETE FROM _sync_log; END")


def _log_trigger_changed(replica: Path) -> None:
    conn = sqlite3.connect(replica)
    name = conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%parent_upd'").fetchone()[
        0
    ]
    conn.execute(f'DROP TRIGGER "{name}"')
    conn.execute(f'CREATE TRIGGER "{name}" AFTER UPDATE ON parent BEGIN SELECT 1; END')
    conn.commit()
    conn.close()


def _view_added(replica: Path) -> None:
    _sql(replica, "CREATE VIEW everything AS SELECT * FROM parent, child")


def _table_added(replica: Path) -> None:
    _sql(replica, "CREATE TABLE notes (x TEXT)")


def _manifest_a_view(replica: Path) -> None:
    _sql(
        replica,
        "ALTER TABLE _sync_manifest RENAME TO manifest_data",
        "CREATE VIEW _sync_manifest AS SELECT * FROM manifest_data",
    )


STRUCTURE: dict[str, tuple[Callable[[Path], None], str]] = {
    "deeply nested JSON in the manifest": (_nested_json_in_manifest, "manifest .* unreadable"),
    "deeply nested JSON in the manifest's modules": (_nested_json_in_modules, "manifest .* unreadable"),
    "deeply nested JSON in the change log": (_nested_json_in_log, "not JSON|nested too deeply|malformed"),
    "deeply nested JSON in a key of the change log": (_nested_json_in_log_key, "malformed key"),
    "non-ASCII signature": (_non_ascii_signature, "signature is not 64 hexadecimal digits"),
    "numeric signature": (_numeric_signature, "signature is not text"),
    "module table replaced by a view": (_module_table_replaced_by_a_view, "unexpected view 'child'"),
    "module table replaced by a virtual table": (_module_table_virtual, "'child' is not a plain table"),
    "module table with a computed column": (_module_table_with_a_computed_column, "parent.bomb' is computed"),
    "recursive view as the change log": (_log_a_recursive_view, "unexpected view '_sync_log'"),
    "view of huge printf strings as the change log": (_log_a_view_of_huge_strings, "unexpected view '_sync_log'"),
    "change log with a computed column": (_log_with_a_computed_column, "table '_sync_log' was redefined"),
    "manifest replaced by a view": (_manifest_a_view, "'_sync_manifest' is a view"),
    "trigger on the manifest": (_trigger_on_the_manifest, "unexpected trigger 'keep_open'"),
    "expression index on the manifest": (_expression_index_on_the_manifest, "unexpected index 'slow'"),
    "trigger of its own on a module table": (_trigger_of_its_own, "unexpected trigger 'mine'"),
    "change-log trigger changed": (_log_trigger_changed, "trigger '_sync_log_parent_upd' was changed"),
    "view added": (_view_added, "unexpected view 'everything'"),
    "table added": (_table_added, "unexpected table 'notes'"),
}


@pytest.mark.parametrize("case", list(STRUCTURE))
def test_hostile_structure_is_refused_before_anything_is_read(
    case: str, backend: str, master_url: str, tmp_path: Path
) -> None:
    engine = make_master(master_url)
    replica = _edited_replica(engine, tmp_path)
    make_hostile, message = STRUCTURE[case]
    make_hostile(replica)
    replica_before = replica.read_bytes()
    _assert_refused(master_url, engine, replica, message)
    if "JSON in the change log" not in case and "key of the change log" not in case:
        assert replica.read_bytes() == replica_before  # refused while the file was open read-only


def test_a_frozen_replica_passes_the_structure_check(backend: str, master_url: str, tmp_path: Path) -> None:
    """The freeze triggers a sync installs are the product's own: a waiting session's replica syncs on."""
    engine = make_master(master_url, "manual")
    replica = _edited_replica(engine, tmp_path)
    with engine.begin() as m:
        m.execute(sa.update(P).where(P.c.id == 1).values(city="Master"))
    assert run_sync(engine, replica).status == "waiting"
    open_replica(engine, replica).close()  # frozen, with a message full of quotes: still the product's


@pytest.mark.parametrize("bound", ["value size", "log entries", "time budget"])
def test_reads_are_bounded(
    bound: str, backend: str, master_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_master(master_url)
    replica = _edited_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        for i in range(300):
            r.execute(sa.update(C).where(C.c.id == i % 10 + 1).values(label=f"L{i}"))
    if bound == "value size":
        monkeypatch.setattr(replica_guard, "MAX_VALUE_BYTES", 100_000)
        with replica_engine(replica).begin() as r:
            r.execute(sa.update(P).where(P.c.id == 2).values(city="x" * 200_000))
        message = "larger than"
    elif bound == "log entries":
        monkeypatch.setattr(replica_guard, "MAX_LOG_ENTRIES", 100)
        message = "more than 100"
    else:
        import sync_pipeline.engine.replica as replica_module

        monkeypatch.setattr(replica_guard, "_PROGRESS_STEPS", 1)
        monkeypatch.setattr(replica_module, "READ_SECONDS", 0.0)
        message = "time budget"
    _assert_refused(master_url, engine, replica, message)


def test_a_write_cut_off_by_a_crash_is_rolled_back_before_the_read_only_checks(tmp_path: Path) -> None:
    """A hot journal (a writer killed after its changes spilled into the file) cannot be read read-only:
    it is rolled back first, and the replica syncs with what was committed."""
    import subprocess
    import sys

    engine = make_master(f"sqlite:///{tmp_path / 'm.db'}")
    replica = _edited_replica(engine, tmp_path)
    writer = (
        "import os, sqlite3, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA cache_size = 1')\n"
        "c.execute('BEGIN IMMEDIATE')\n"
        "for i in range(2000):\n"
        "    c.execute('INSERT INTO child (id, parent_id, label) VALUES (?, 1, ?)', (1000 + i, 'x' * 500))\n"
        "os._exit(9)\n"
    )
    subprocess.run([sys.executable, "-c", writer, str(replica)], check=False)
    assert Path(f"{replica}-journal").exists()
    result = run_sync(engine, replica)
    assert result.status == "done"
    with engine.connect() as m:
        assert m.execute(sa.select(P.c.city).where(P.c.id == 1)).scalar_one() == "Local"
        assert m.execute(sa.select(sa.func.count()).select_from(C)).scalar_one() == 10
