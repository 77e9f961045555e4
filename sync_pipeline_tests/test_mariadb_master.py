"""MariaDB as the master: what MySQL does differently (issue 12 point 3), on the real server.

- DDL commits by itself: `init-master` killed (SIGKILL) after the first table's triggers leaves part of
  them; run again, it completes them, keeps the master's identity, and the sync works.
- One trigger per event: the field clock records a case-only change (which the column's
  case-insensitive collation calls equal) and a deleted row's tombstone.
- Natural-key duplicates follow the column's collation: `MULLER` is `Müller` under utf8mb4_general_ci
  (and the conflict says so), another person under utf8mb4_bin.
- Deadlocks (1213) and lock-wait timeouts (1205) are transient: retried like PostgreSQL's 40P01.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync_pipeline.engine import store
from sync_pipeline.engine.dialects import impl_for
from sync_pipeline.engine.master import connect_master, init_master
from sync_pipeline.engine.queries import list_conflicts
from sync_pipeline.engine.retry import transient_kind
from sync_pipeline.engine.schema import reflect_tables
from sync_pipeline.engine.session import run_sync
from sync_pipeline.engine.settings import parse_settings
from sync_pipeline_tests.conftest import fresh_mariadb_url
from sync_pipeline_tests.helpers import (
    BASE_ROWS,
    TABLES,
    make_master,
    make_replica,
    replica_engine,
    row,
    rows,
    sample_metadata,
)

P = TABLES["parent"]
SETTINGS = (
    "modules:\n  core:\n    policy: master_wins\n    tables:\n      parent: {}\n      child: {}\n      tagged: {}\n"
)
KILLED = -signal.SIGKILL


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_mariadb_url() as fresh:
        yield fresh


def _init_master(url: str, settings: Path, fault: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SYNC_FAULT"}
    if fault:
        env["SYNC_FAULT"] = fault
    entry = "from sync_pipeline.cli import main; main()"
    command = [sys.executable, "-c", entry, "init-master", "--master", url, "--settings", str(settings)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _installed(engine: Engine) -> dict[str, bool]:
    infos = reflect_tables(engine, ["parent", "child", "tagged"])
    with engine.connect() as conn:
        return {name: impl_for(conn).capture_installed(conn, info) for name, info in infos.items()}


def test_init_master_killed_half_way_completes_when_run_again(url: str, tmp_path: Path) -> None:
    engine = connect_master(url, must_exist=False)
    metadata = sample_metadata()
    metadata.create_all(engine)
    with engine.begin() as conn:
        for name, rows in BASE_ROWS.items():
            conn.execute(sa.insert(metadata.tables[name]), rows)
    settings = tmp_path / "settings.yaml"
    settings.write_text(SETTINGS)

    killed = _init_master(url, settings, fault="init_capture:1")
    assert killed.returncode == KILLED, killed.stdout + killed.stderr
    # MariaDB committed each DDL statement: the first table's triggers exist, the others' do not.
    assert _installed(engine) == {"parent": True, "child": False, "tagged": False}
    first_id = store.read_meta(engine)["master_id"]

    done = _init_master(url, settings)
    assert done.returncode == 0, done.stdout + done.stderr
    assert _installed(engine) == {"parent": True, "child": True, "tagged": True}
    assert store.read_meta(engine)["master_id"] == first_id  # the same master, not a new one
    again = _init_master(url, settings)  # and once more: nothing to do, nothing breaks
    assert again.returncode == 0, again.stdout + again.stderr

    # Every table's capture works: a master edit after checkout conflicts with the local one.
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(TABLES["tagged"]).where(TABLES["tagged"].c.code == "A").values(title="local"))
    with engine.begin() as conn:
        conn.execute(sa.update(TABLES["tagged"]).where(TABLES["tagged"].c.code == "A").values(title="master"))
    result = run_sync(engine, replica)
    assert result.status == "done"
    assert row(engine, "tagged", code="A", version=1)["title"] == "master"  # master_wins decided the conflict
    engine.dispose()


def test_case_only_change_is_clocked_and_delete_leaves_a_tombstone(url: str, tmp_path: Path) -> None:
    engine = make_master(url, "master_wins")
    with engine.begin() as conn:
        conn.execute(sa.update(P).where(P.c.id == 1).values(name="p1"))  # 'P1' -> 'p1': equal to the collation
        conn.execute(sa.delete(TABLES["child"]).where(TABLES["child"].c.id.in_([1, 6])))
        conn.execute(sa.delete(P).where(P.c.id == 1))
        clock = conn.execute(
            sa.select(store.sync_field_clock.c.column_name).where(
                store.sync_field_clock.c.table_name == "parent", store.sync_field_clock.c.row_key == "1"
            )
        ).scalars()
        tombstone = conn.execute(
            sa.select(store.sync_tombstone.c.row_image).where(store.sync_tombstone.c.table_name == "parent")
        ).scalar_one()
    # The update's 'name' row was written before the delete's '*' (both kept: one row per field).
    assert set(clock) == {"name", "*"}
    assert '"name": "p1"' in tombstone and '"email": "p1@example.com"' in tombstone
    engine.dispose()


def test_deadlock_is_a_transient_abort(url: str) -> None:
    engine = make_master(url, "master_wins")
    first_locked, second_locked = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def cross(mine: int, theirs: int, locked: threading.Event, other: threading.Event) -> None:
        try:
            with engine.begin() as conn:
                conn.execute(sa.update(P).where(P.c.id == mine).values(city="x"))
                locked.set()
                other.wait(30)
                conn.execute(sa.update(P).where(P.c.id == theirs).values(city="y"))
        except sa.exc.DBAPIError as exc:
            errors.append(exc)

    threads = [
        threading.Thread(target=cross, args=(1, 2, first_locked, second_locked)),
        threading.Thread(target=cross, args=(2, 1, second_locked, first_locked)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert len(errors) == 1, errors  # the server broke the cycle by aborting one of them
    assert transient_kind(errors[0]) == "deadlock"
    # The other transaction went through whole: its own row 'x', the row it waited for 'y'.
    cities = (row(engine, "parent", id=1)["city"], row(engine, "parent", id=2)["city"])  # type: ignore[index]
    assert cities in (("x", "y"), ("y", "x"))
    engine.dispose()


PERSON_SETTINGS = "modules:\n  crm:\n    policy: manual\n    tables:\n      person: {natural_key: [name]}\n"


def _person_master(url: str, collation: str) -> Engine:
    engine = connect_master(url, must_exist=False)
    person = sa.Table(
        "person",
        metadata := sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(60, collation=collation), nullable=False),
        sa.Column("city", sa.String(60)),
    )
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(person), [{"id": 1, "name": "Müller", "city": "Bern"}])
    init_master(engine, parse_settings(PERSON_SETTINGS, "test-settings.yaml"))
    return engine


def _insert_person(replica: Path, name: str) -> None:
    with replica_engine(replica).begin() as r:
        r.execute(sa.text("INSERT INTO person (name, city) VALUES (:n, 'Basel')"), {"n": name})


@pytest.mark.parametrize(
    ("collation", "duplicate"),
    [("utf8mb4_general_ci", True), ("utf8mb4_bin", False)],
)
def test_natural_key_duplicate_follows_the_column_collation(
    url: str, tmp_path: Path, collation: str, duplicate: bool
) -> None:
    """`MULLER` is `Müller` under a case- and accent-insensitive collation (a duplicate, and the conflict
    says why); under a binary one it is another person, inserted."""
    engine = _person_master(url, collation)
    replica = make_replica(engine, tmp_path)
    _insert_person(replica, "MULLER")
    result = run_sync(engine, replica)
    conflicts = list_conflicts(engine, result.session_id)
    people = sorted((r["name"], r["city"]) for r in rows(engine, "person"))
    if duplicate:
        assert result.status == "waiting" and [c["kind"] for c in conflicts] == ["duplicate"]
        with engine.connect() as conn:
            note = conn.execute(
                sa.select(store.sync_change.c.note).where(store.sync_change.c.session_id == result.session_id)
            ).scalar_one()
        assert collation in note and "MULLER" in note and "Müller" in note, note
        assert people == [("Müller", "Bern")]  # nothing written while the duplicate waits
    else:
        assert result.status == "done" and conflicts == []
        assert people == [("MULLER", "Basel"), ("Müller", "Bern")]
    engine.dispose()
