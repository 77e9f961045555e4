"""A foreign key that points at a unique column, not at the key (`emp.dept_no → dept.dept_no`), whose values
look like keys of the same table. Remapping changes a parent's key, never its `dept_no`, and the replica's
new parents are known by the columns the reference names: neither may be looked up by the key.

Before: a new employee of department number 3 was re-pointed to number 5, because the new department with
local *key* 3 was remapped to key 5 ("done", the wrong department); a new employee of a new department was
dropped as an orphan; and a new employee of a department the master deleted was not an orphan when a new
department's key equalled that department's number (the load failed on the foreign key); and a department
the replica deleted was deleted although the master had given it an employee meanwhile, whom the cascade
deleted with it (references to other columns than the key were not looked at)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from sync_pipeline_tests.helpers import checked_out, cli_sync, master_of
from sync_pipeline_tests.masters import backend_on_all_masters  # noqa: F401 - `backend` over all three masters

SETTINGS = "modules:\n  hr:\n    policy: master_wins\n    tables:\n      dept: {}\n      emp: {}\n"


def _hr_master(url: str) -> sa.Engine:
    """Departments 1 (number 3) and 2 (number 40); one employee in number 3. Keys generated."""
    metadata = sa.MetaData()
    sa.Table(
        "dept",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("dept_no", sa.Integer, nullable=False, unique=True),
        sa.Column("name", sa.String(40)),
    )
    sa.Table(
        "emp",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("dept_no", sa.Integer, sa.ForeignKey("dept.dept_no", ondelete="CASCADE")),
        sa.Column("name", sa.String(40)),
    )
    rows = {
        "dept": [{"dept_no": 3, "name": "three"}, {"dept_no": 40, "name": "forty"}],
        "emp": [{"dept_no": 3, "name": "first"}],
    }
    return master_of(url, metadata, SETTINGS, rows)


def _master(engine: sa.Engine, query: str) -> set[tuple]:
    with engine.connect() as conn:
        return {tuple(r) for r in conn.execute(sa.text(query))}


def test_a_remapped_department_does_not_move_employees_of_a_number_equal_to_its_local_key(
    master_url: str, tmp_path: Path
) -> None:
    engine = _hr_master(master_url)
    replica = checked_out(
        engine,
        tmp_path,
        "INSERT INTO dept (id, dept_no, name) VALUES (3, 77, 'local dept')",  # key 3: the master takes it
        "INSERT INTO emp (dept_no, name) VALUES (3, 'new in three')",  # department number 3: 'three'
        "INSERT INTO emp (dept_no, name) VALUES (77, 'new in local dept')",
    )
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO dept (dept_no, name) VALUES (5, 'master dept')"))  # key 3

    code, output = cli_sync(master_url, replica)

    assert code == 0, output
    assert _master(engine, "SELECT name, dept_no FROM emp") == {
        ("first", 3),
        ("new in three", 3),
        ("new in local dept", 77),
    }
    assert ("local dept", 77) in _master(engine, "SELECT name, dept_no FROM dept")


def test_an_employee_of_a_deleted_department_is_an_orphan_whatever_new_keys_there_are(
    master_url: str, tmp_path: Path
) -> None:
    engine = _hr_master(master_url)
    replica = checked_out(
        engine,
        tmp_path,
        "INSERT INTO dept (id, dept_no, name) VALUES (40, 41, 'new dept')",  # key 40, free on the master
        "INSERT INTO emp (dept_no, name) VALUES (40, 'new in forty')",
    )
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM dept WHERE dept_no = 40"))

    code, output = cli_sync(master_url, replica)

    assert code == 0, output
    # master_wins: the orphan is dropped (its department stays deleted); the new department is loaded.
    assert _master(engine, "SELECT name, dept_no FROM emp") == {("first", 3)}
    assert _master(engine, "SELECT id, name, dept_no FROM dept") == {(1, "three", 3), (40, "new dept", 41)}


def test_a_department_the_master_gave_an_employee_is_not_deleted_from_under_it(master_url: str, tmp_path: Path) -> None:
    engine = _hr_master(master_url)
    replica = checked_out(engine, tmp_path, "DELETE FROM dept WHERE dept_no = 40")
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO emp (dept_no, name) VALUES (40, 'hired by the master')"))

    code, output = cli_sync(master_url, replica)

    assert code == 0, output
    assert ("hired by the master", 40) in _master(engine, "SELECT name, dept_no FROM emp")
    assert ("forty", 40) in _master(engine, "SELECT name, dept_no FROM dept")
