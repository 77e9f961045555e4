"""The conflict history: every conflict detected or decided in the window, with local, master and kept
values, the rule or person, session and replica; older ones are left out. Old rows are made by moving
their timestamps back in the sync tables.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine

from sync_pipeline.cli import main
from sync_pipeline.cli_reports import history_command
from sync_pipeline.engine import store
from sync_pipeline.engine.history import conflict_history
from sync_pipeline.engine.session import run_sync
from sync_pipeline_tests.helpers import TABLES, make_master, make_replica, pause, replica_engine, row, settings_yaml

P, C = TABLES["parent"], TABLES["child"]


@dataclass
class Synced:
    session_id: str
    replica_id: str


@dataclass
class Scenario:
    engine: Engine
    url: str
    old: Synced  # parent 1, master_wins, done
    new: Synced  # parent 2, master_wins, done
    waiting: Synced  # child 3, manual, pending


def _conflicting_sync(engine: Engine, folder: Path, owner: str, table: sa.Table, key: int, column: str) -> Synced:
    replica = make_replica(engine, folder, owner=owner)
    with replica_engine(replica).begin() as local:
        local.execute(sa.update(table).where(table.c.id == key).values({column: f"{owner} offline"}))
    pause()
    with engine.begin() as master:
        master.execute(sa.update(table).where(table.c.id == key).values({column: f"master for {owner}"}))
    result = run_sync(engine, replica)
    assert result.session_id
    with engine.connect() as conn:
        replica_id = conn.execute(
            sa.select(store.sync_session.c.replica_id).where(store.sync_session.c.session_id == result.session_id)
        ).scalar_one()
    return Synced(result.session_id, replica_id)


@pytest.fixture
def scenario(master_url: str, tmp_path: Path) -> Scenario:
    engine = make_master(master_url, settings=settings_yaml("master_wins", table_policies={"child": "manual"}))
    old = _conflicting_sync(engine, tmp_path, "Old Olga", P, 1, "city")
    new = _conflicting_sync(engine, tmp_path, "New Nina", P, 2, "city")
    waiting = _conflicting_sync(engine, tmp_path, "Waiting Will", C, 3, "label")
    return Scenario(engine, master_url, old, new, waiting)


def _ago(days: float) -> str:
    return (dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(days=days)).isoformat(timespec="microseconds")


def _age(engine: Engine, session_id: str, detected_days_ago: float, decided_days_ago: float) -> None:
    conflict_ids = sa.select(store.sync_conflict.c.conflict_id).where(store.sync_conflict.c.session_id == session_id)
    with engine.begin() as conn:
        conn.execute(
            sa.update(store.sync_conflict)
            .where(store.sync_conflict.c.session_id == session_id)
            .values(created_at=_ago(detected_days_ago))
        )
        conn.execute(
            sa.update(store.sync_decision)
            .where(store.sync_decision.c.conflict_id.in_(conflict_ids))
            .values(decided_at=_ago(decided_days_ago))
        )


def test_history_lists_recent_conflicts_with_values_rule_session_and_replica(scenario: Scenario) -> None:
    _age(scenario.engine, scenario.old.session_id, 10, 10)
    entries = conflict_history(scenario.engine)  # default: 7 days
    assert {e.conflict.session for e in entries} == {scenario.new.session_id, scenario.waiting.session_id}

    (new,) = [e for e in entries if e.conflict.session == scenario.new.session_id]
    assert (new.replica, new.owner, new.session_status) == (scenario.new.replica_id, "New Nina", "done")
    assert (new.conflict.kind, new.conflict.table, new.conflict.key) == ("update_update", "parent", {"id": 2})
    (city,) = new.conflict.fields
    assert (city.name, city.local, city.master) == ("city", "New Nina offline", "master for New Nina")
    # The value kept is the master's (master_wins), and the master holds it.
    assert (city.take, city.kept, city.rule, city.decided_by) == ("master", "master for New Nina", "master_wins", None)
    assert row(scenario.engine, "parent", id=2)["city"] == city.kept
    assert new.conflict.rule == "master_wins" and new.time == new.conflict.decided_at

    (waiting,) = [e for e in entries if e.conflict.session == scenario.waiting.session_id]
    assert waiting.session_status == "waiting" and waiting.owner == "Waiting Will"
    assert (waiting.conflict.status, waiting.conflict.take, waiting.conflict.fields[0].kept) == ("pending", None, None)
    assert waiting.time == waiting.conflict.created_at

    everything = conflict_history(scenario.engine, days=30)
    assert {e.conflict.session for e in everything} == {
        scenario.old.session_id,
        scenario.new.session_id,
        scenario.waiting.session_id,
    }
    # Newest first: the aged conflict comes last.
    assert everything[-1].conflict.session == scenario.old.session_id
    assert [e.time for e in everything] == sorted((e.time for e in everything), reverse=True)


def test_a_conflict_detected_before_the_window_but_decided_in_it_is_listed(scenario: Scenario) -> None:
    _age(scenario.engine, scenario.old.session_id, 10, 2)
    sessions = {e.conflict.session for e in conflict_history(scenario.engine, days=7)}
    assert scenario.old.session_id in sessions
    _age(scenario.engine, scenario.old.session_id, 10, 8)
    sessions = {e.conflict.session for e in conflict_history(scenario.engine, days=7)}
    assert scenario.old.session_id not in sessions


def test_history_command_prints_text_and_json(scenario: Scenario) -> None:
    # Importing cli_reports registers the command on `sync-pipeline`.
    assert main.commands["history"] is history_command
    _age(scenario.engine, scenario.old.session_id, 10, 10)
    runner = CliRunner()
    as_json = runner.invoke(main, ["history", "--master", scenario.url, "--json"])
    assert as_json.exit_code == 0, as_json.output
    items = json.loads(as_json.output)
    assert [(i["session"], i["id"]) for i in items] == [
        (e.conflict.session, e.conflict.id) for e in conflict_history(scenario.engine)
    ]
    for item in items:
        assert {"time", "replica", "owner", "session_status", "session", "module", "table", "key", "kind"} <= set(item)
        assert {"name", "base", "local", "master", "kept", "take", "rule", "decided_by"} <= set(item["fields"][0])
    assert "Old Olga" not in as_json.output

    wide = runner.invoke(main, ["history", "--master", scenario.url, "--days", "30"])
    assert wide.exit_code == 0, wide.output
    for expected in ("Old Olga", "New Nina", "Waiting Will", "master for New Nina", "master_wins", "pending"):
        assert expected in wide.output, expected

    assert runner.invoke(main, ["history", "--master", scenario.url, "--days", "0"]).exit_code == 2


def test_history_of_a_quiet_master_is_empty(master_url: str) -> None:
    engine = make_master(master_url)
    assert conflict_history(engine) == []
    result = CliRunner().invoke(main, ["history", "--master", master_url])
    assert result.exit_code == 0 and "no conflicts in the last 7 day(s)" in result.output
