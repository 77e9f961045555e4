"""Bad input: a clear message, exit code 2, and the master byte-for-byte as it was."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from sync_pipeline.cli import main
from sync_pipeline_tests.helpers import TABLES, make_master, make_replica, master_state, replica_engine, replica_sql
from sync_pipeline_tests.masters import backend_on_all_masters  # noqa: F401 - `backend` over all three masters

P = TABLES["parent"]


def _sync(master_url: str, replica: Path | str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["sync", "--master", master_url, "--replica", str(replica)])
    return result.exit_code, result.output


def _edited_replica(engine: sa.Engine, tmp_path: Path) -> Path:
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(P).where(P.c.id == 1).values(city="edited"))
    return replica


def _manifest_value(replica: Path, key: str, value: object) -> None:
    conn = sqlite3.connect(replica)
    conn.execute("UPDATE _sync_manifest SET value = ? WHERE key = ?", (json.dumps(value), key))
    conn.commit()
    conn.close()


def _missing(engine: sa.Engine, tmp_path: Path) -> Path:
    return tmp_path / "no-such-replica.db"


def _not_sqlite(engine: sa.Engine, tmp_path: Path) -> Path:
    path = tmp_path / "notes.db"
    path.write_text("these are my notes, not a database\n" * 20)
    return path


def _sqlite_not_replica(engine: sa.Engine, tmp_path: Path) -> Path:
    path = tmp_path / "other.db"
    replica_sql(path, "CREATE TABLE t (x INTEGER)")
    return path


def _truncated(engine: sa.Engine, tmp_path: Path) -> Path:
    replica = _edited_replica(engine, tmp_path)
    data = replica.read_bytes()
    replica.write_bytes(data[: len(data) // 3])
    return replica


def _tampered_manifest(engine: sa.Engine, tmp_path: Path) -> Path:
    replica = _edited_replica(engine, tmp_path)
    _manifest_value(replica, "owner", "mallory")
    return replica


def _tampered_modules(engine: sa.Engine, tmp_path: Path) -> Path:
    replica = _edited_replica(engine, tmp_path)
    _manifest_value(replica, "modules", ["core", "hr"])
    return replica


def _forged_signature(engine: sa.Engine, tmp_path: Path) -> Path:
    replica = _edited_replica(engine, tmp_path)
    _manifest_value(replica, "signature", "00" * 32)
    return replica


def _log_outside_modules(engine: sa.Engine, tmp_path: Path) -> Path:
    replica = _edited_replica(engine, tmp_path)
    replica_sql(
        replica,
        "INSERT INTO _sync_log (table_name, op, row_key, old_values, new_values, changed_at) VALUES "
        "('salary', 'I', '[1]', NULL, '{\"id\": 1, \"amount\": 1000000}', '2026-01-01T00:00:00.000')",
    )
    return replica


def _log_unknown_column(engine: sa.Engine, tmp_path: Path) -> Path:
    replica = _edited_replica(engine, tmp_path)
    replica_sql(
        replica,
        "INSERT INTO _sync_log (table_name, op, row_key, old_values, new_values, changed_at) VALUES "
        "('parent', 'I', '[90]', NULL, "
        '\'{"id": 90, "name": "x", "is_admin": 1}\', \'2026-01-01T00:00:00.000\')',
    )
    return replica


def _text_in_integer_column(engine: sa.Engine, tmp_path: Path) -> Path:
    replica = _edited_replica(engine, tmp_path)
    replica_sql(replica, "INSERT INTO child (id, parent_id, label) VALUES (900, 'not a number', 'x')")
    return replica


def _too_long_text(engine: sa.Engine, tmp_path: Path) -> Path:
    replica = _edited_replica(engine, tmp_path)
    replica_sql(replica, f"UPDATE parent SET name = '{'x' * 51}' WHERE id = 2")
    return replica


def _invalid_date(engine: sa.Engine, tmp_path: Path) -> Path:
    replica = _edited_replica(engine, tmp_path)
    replica_sql(replica, "INSERT INTO tagged (code, version, title, valid_from) VALUES ('D', 1, 't', '2026-02-30')")
    return replica


def _schema_drift(engine: sa.Engine, tmp_path: Path) -> Path:
    replica = _edited_replica(engine, tmp_path)
    with engine.begin() as m:
        m.execute(sa.text("ALTER TABLE parent ADD COLUMN phone VARCHAR(20)"))
    return replica


def _retired(engine: sa.Engine, tmp_path: Path) -> Path:
    replica = _edited_replica(engine, tmp_path)
    code, output = _sync(engine.url.render_as_string(hide_password=False), replica)
    assert code == 0, output
    return replica


CASES: dict[str, tuple[Callable[[sa.Engine, Path], Path], str]] = {
    "missing replica": (_missing, "does not exist"),
    "not a SQLite file": (_not_sqlite, "is not a SQLite database"),
    "SQLite file that is not a replica": (_sqlite_not_replica, "not a replica"),
    "truncated replica": (_truncated, "damaged|truncated|malformed|not a database|disk image"),
    "tampered manifest": (_tampered_manifest, "does not match its signature"),
    "tampered modules": (_tampered_modules, "does not match its signature"),
    "forged signature": (_forged_signature, "does not match its signature"),
    "change log outside the modules": (_log_outside_modules, "not in the replica's modules"),
    "change log with an unknown column": (_log_unknown_column, "is_admin"),
    "text in an integer column": (_text_in_integer_column, "parent_id.*not an integer"),
    "text longer than the column": (_too_long_text, "longer than the column's 50"),
    "invalid date": (_invalid_date, "valid_from"),
    "schema drift since checkout": (_schema_drift, "parent.phone was added"),
    "retired replica synced again": (_retired, "already synchronised and retired"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_replica_is_refused_and_master_unchanged(case: str, master_url: str, tmp_path: Path) -> None:
    make_bad, message = CASES[case]
    engine = make_master(master_url)
    replica = make_bad(engine, tmp_path)
    before = master_state(engine)
    code, output = _sync(master_url, replica)
    assert code == 2, output
    assert "\nerror: " in "\n" + output and "fix:" in output
    import re

    assert re.search(message, output), output
    assert master_state(engine) == before


def test_replica_of_another_master_is_refused(tmp_path: Path) -> None:
    first = make_master(f"sqlite:///{tmp_path / 'first.db'}")
    second_url = f"sqlite:///{tmp_path / 'second.db'}"
    second = make_master(second_url)
    replica = _edited_replica(first, tmp_path)
    before = master_state(second)
    code, output = _sync(second_url, replica)
    assert code == 2 and "checked out from another master" in output
    assert master_state(second) == before


def test_dry_run_writes_nothing(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url)
    replica = _edited_replica(engine, tmp_path)
    before = master_state(engine)
    replica_before = replica.read_bytes()
    result = CliRunner().invoke(
        main, ["sync", "--master", master_url, "--replica", str(replica), "--dry-run", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["status"] == "dry-run" and report["modules"]["core"]["updates"] == 1
    assert master_state(engine) == before and replica.read_bytes() == replica_before


def _forged_base(engine: sa.Engine, tmp_path: Path) -> Path:
    replica = _edited_replica(engine, tmp_path)
    # Claim that parent 1's name was something else at checkout, to sneak a change past detection.
    replica_sql(
        replica,
        "UPDATE _sync_log SET old_values = json_set(old_values, '$.name', 'Forged') WHERE table_name = 'parent'",
    )
    return replica


def _forged_key(engine: sa.Engine, tmp_path: Path) -> Path:
    replica = _edited_replica(engine, tmp_path)
    replica_sql(
        replica,
        "INSERT INTO _sync_log (table_name, op, row_key, old_values, new_values, changed_at) VALUES "
        '(\'parent\', \'D\', \'[4242]\', \'{"id": 4242, "name": "ghost", "city": null, "email": null}\', '
        "NULL, '2026-01-01T00:00:00.000')",
    )
    return replica


CASES["forged base values in the change log"] = (_forged_base, "column 'name' was 'Forged' at checkout")
CASES["forged key in the change log"] = (_forged_key, "did not have at checkout")


@pytest.mark.parametrize("case", ["forged base values in the change log", "forged key in the change log"])
def test_forged_change_log_is_refused(case: str, master_url: str, tmp_path: Path) -> None:
    test_bad_replica_is_refused_and_master_unchanged(case, master_url, tmp_path)


def test_bad_input_leaves_the_replica_unfrozen(tmp_path: Path) -> None:
    engine = make_master(f"sqlite:///{tmp_path / 'm.db'}")
    replica = _text_in_integer_column(engine, tmp_path)
    code, output = _sync(str(engine.url), replica)
    assert code == 2
    # The field worker can correct the row and sync again.
    replica_sql(replica, "UPDATE child SET parent_id = 1 WHERE id = 900")
    code, output = _sync(str(engine.url), replica)
    assert code == 0, output
