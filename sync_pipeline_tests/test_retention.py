"""Retention: the purge removes the rows of sessions that closed before the cutoff, all of them, and
nothing of newer or still-open sessions; the field clock only below every live checkout. Old rows are
made by moving timestamps back in the sync tables.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from sync_pipeline.cli import main
from sync_pipeline.cli_reports import purge_command
from sync_pipeline.engine import store
from sync_pipeline.engine.errors import ConflictNotFoundError
from sync_pipeline.engine.protocol import build_protocol
from sync_pipeline.engine.retention import purge_sync_history
from sync_pipeline.engine.session import run_sync
from sync_pipeline_tests.helpers import TABLES, make_master, make_replica, pause, replica_engine, settings_yaml

P, C = TABLES["parent"], TABLES["child"]
SESSION_TABLES = ("sync_decision", "sync_conflict", "sync_applied", "sync_change", "sync_session")


@dataclass
class Scenario:
    engine: Engine
    url: str
    old_done: str
    new_done: str
    old_open: str  # waiting for a decision, started long ago


def _sync_with_conflict(engine: Engine, folder: Path, table: sa.Table, key: int, column: str) -> str:
    replica = make_replica(engine, folder)
    with replica_engine(replica).begin() as local:
        local.execute(sa.update(table).where(table.c.id == key).values({column: "offline"}))
        # A plain change too, so that the session has applied rows besides the conflict's.
        local.execute(sa.update(C).where(C.c.id == key + 5).values(label=f"plain {key}"))
    pause()
    with engine.begin() as master:
        master.execute(sa.update(table).where(table.c.id == key).values({column: "master"}))
    result = run_sync(engine, replica)
    assert result.session_id
    return result.session_id


def _make(master_url: str, folder: Path, extra_settings: str = "") -> Scenario:
    settings = settings_yaml("local_wins", table_policies={"parent": "manual"}) + extra_settings
    engine = make_master(master_url, settings=settings)
    old_done = _sync_with_conflict(engine, folder, C, 1, "label")
    new_done = _sync_with_conflict(engine, folder, C, 2, "label")
    old_open = _sync_with_conflict(engine, folder, P, 3, "city")
    with engine.begin() as conn:
        s = store.sync_session
        statuses = dict(conn.execute(sa.select(s.c.session_id, s.c.status)).all())
        assert [statuses[x] for x in (old_done, new_done, old_open)] == ["done", "done", "waiting"]
        conn.execute(sa.update(s).where(s.c.session_id == old_done).values(started_at=_ago(101), finished_at=_ago(100)))
        conn.execute(sa.update(s).where(s.c.session_id == old_open).values(started_at=_ago(100)))
    return Scenario(engine, master_url, old_done, new_done, old_open)


@pytest.fixture
def scenario(master_url: str, tmp_path: Path) -> Scenario:
    return _make(master_url, tmp_path)


def _ago(days: float) -> str:
    return (dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(days=days)).isoformat(timespec="microseconds")


def _rows_per_session(engine: Engine) -> dict[str, Counter[str]]:
    """For each sync table, how many rows each session owns (read with plain SQL)."""
    out: dict[str, Counter[str]] = {}
    with engine.connect() as conn:
        for name in ("sync_conflict", "sync_applied", "sync_change", "sync_session"):
            table = store.metadata.tables[name]
            out[name] = Counter(r[0] for r in conn.execute(sa.select(table.c.session_id)))
        d, c = store.sync_decision, store.sync_conflict
        out["sync_decision"] = Counter(
            r[0] for r in conn.execute(sa.select(c.c.session_id).join(d, d.c.conflict_id == c.c.conflict_id))
        )
    return out


def _count(engine: Engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(store.metadata.tables[table])).scalar_one()


def test_purge_removes_only_old_rows_of_closed_sessions(scenario: Scenario) -> None:
    engine = scenario.engine
    before = _rows_per_session(engine)
    for name in SESSION_TABLES:
        # The scenario must give every table something to purge and something to keep.
        assert before[name][scenario.old_done] > 0 and before[name][scenario.new_done] > 0, name
    assert before["sync_conflict"][scenario.old_open] > 0
    replicas = _count(engine, "sync_replica")

    counts = purge_sync_history(engine)  # retention_days from the settings: 90 by default

    assert {name: counts[name] for name in SESSION_TABLES} == {
        name: before[name][scenario.old_done] for name in SESSION_TABLES
    }
    after = _rows_per_session(engine)
    for name in SESSION_TABLES:
        assert after[name][scenario.old_done] == 0, name
        assert after[name][scenario.new_done] == before[name][scenario.new_done], name
        assert after[name][scenario.old_open] == before[name][scenario.old_open], name
    assert _count(engine, "sync_replica") == replicas
    with pytest.raises(ConflictNotFoundError):
        build_protocol(engine, scenario.old_done)
    assert build_protocol(engine, scenario.new_done).state == "done"
    assert build_protocol(engine, scenario.old_open).state == "waiting"
    # A second purge finds nothing more.
    assert sum(purge_sync_history(engine).values()) == 0


def test_dry_run_counts_without_deleting_and_days_override_the_settings(scenario: Scenario) -> None:
    engine = scenario.engine
    before = _rows_per_session(engine)
    planned = purge_sync_history(engine, dry_run=True)
    assert planned["sync_session"] == 1 and planned["sync_change"] == before["sync_change"][scenario.old_done]
    assert _rows_per_session(engine) == before
    assert sum(purge_sync_history(engine, days=150).values()) == 0
    assert _rows_per_session(engine) == before
    assert purge_sync_history(engine, days=99)["sync_session"] == 1


def test_retention_days_come_from_the_settings(master_url: str, tmp_path: Path) -> None:
    scenario = _make(master_url, tmp_path, "retention_days: 120\n")
    assert purge_sync_history(scenario.engine)["sync_session"] == 0
    assert purge_sync_history(scenario.engine, days=90)["sync_session"] == 1


def test_field_clock_is_purged_only_below_every_live_checkout(scenario: Scenario) -> None:
    engine = scenario.engine
    clock = store.sync_field_clock
    with engine.begin() as conn:
        keys = conn.execute(sa.select(clock.c.table_name, clock.c.row_key, clock.c.column_name).limit(2)).all()
        assert len(keys) == 2
        for table_name, row_key, column_name in keys:
            conn.execute(
                sa.update(clock)
                .where(clock.c.table_name == table_name, clock.c.row_key == row_key, clock.c.column_name == column_name)
                .values(changed_at=_ago(95))
            )
        # A replica checked out 200 days ago can still sync: its detection may need those clock rows.
        r = store.sync_replica
        live = conn.execute(sa.select(r.c.replica_id).where(r.c.status != "retired")).scalars().first()
        conn.execute(sa.update(r).where(r.c.replica_id == live).values(checked_out_at=_ago(200)))
    total = _count(engine, "sync_field_clock")
    assert purge_sync_history(engine)["sync_field_clock"] == 0
    assert _count(engine, "sync_field_clock") == total

    with engine.begin() as conn:
        conn.execute(
            sa.update(store.sync_replica).where(store.sync_replica.c.replica_id == live).values(checked_out_at=_ago(1))
        )
    assert purge_sync_history(engine)["sync_field_clock"] == 2
    assert _count(engine, "sync_field_clock") == total - 2


def test_purge_command_prints_counts(scenario: Scenario) -> None:
    # Importing cli_reports registers the command on `sync-pipeline`.
    assert main.commands["purge"] is purge_command
    runner = CliRunner()
    dry = runner.invoke(main, ["purge", "--master", scenario.url, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "would delete" in dry.output and "sync_session: 1" in dry.output and "older than 90 day(s)" in dry.output
    done = runner.invoke(main, ["purge", "--master", scenario.url, "--days", "30"])
    assert done.exit_code == 0, done.output
    assert "deleted" in done.output and "sync_session: 1" in done.output
    assert _rows_per_session(scenario.engine)["sync_session"][scenario.old_done] == 0
    assert runner.invoke(main, ["purge", "--master", scenario.url, "--days", "0"]).exit_code == 2
