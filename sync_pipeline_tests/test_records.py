"""`engine.records`: the statuses as stored, the moves a real sync makes, and the one rule of which decision
is in force, as the engine's readers (the load's fold, the public JSON, the page's and CLI's rules) see it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine import records, resolve
from sync_pipeline.engine.queries import get_conflict
from sync_pipeline.engine.records import (
    REPLICA_MOVES,
    SESSION_MOVES,
    ConflictStatus,
    ReplicaStatus,
    SessionStatus,
    may_move,
)
from sync_pipeline.engine.session import decide, decide_module, run_sync
from sync_pipeline_tests.helpers import row
from sync_pipeline_tests.test_review_http import make_review_master


def _statuses(engine: Engine, session_id: str) -> tuple[str, str]:
    """(session status, replica status) as the master stores them: plain text, read without the enums."""
    with engine.connect() as conn:
        found = conn.execute(
            sa.text(
                "SELECT s.status, r.status FROM sync_session s JOIN sync_replica r ON r.replica_id = s.replica_id "
                "WHERE s.session_id = :id"
            ),
            {"id": session_id},
        ).one()
    return str(found[0]), str(found[1])


@contextmanager
def watched_moves() -> Iterator[dict[str, list[tuple[str, str]]]]:
    """Every status change of a session or replica, (old, new) as stored, read just before each UPDATE runs."""
    moves: dict[str, list[tuple[str, str]]] = {"sync_session": [], "sync_replica": []}

    def before(conn: Connection, clause: Any, multiparams: Any, params: Any, options: Any) -> None:
        if not isinstance(clause, sa.Update) or clause.table.name not in moves:  # type: ignore[attr-defined]
            return
        new = clause.compile().params.get("status")
        if new is None:
            return
        table = clause.table  # type: ignore[attr-defined]
        for (old,) in conn.execute(sa.select(table.c.status).where(clause.whereclause)):
            moves[table.name].append((str(old), str(new)))

    event.listen(Engine, "before_execute", before)
    try:
        yield moves
    finally:
        event.remove(Engine, "before_execute", before)


def test_a_manual_sync_makes_only_allowed_moves_and_stores_the_same_text(master_url: str, tmp_path: Path) -> None:
    with watched_moves() as moves:
        engine, replica, session_id, _ids = make_review_master(master_url, tmp_path)
        assert _statuses(engine, session_id) == ("waiting", "waiting")
        assert decide_module(engine, session_id, "core", "local", "Ada Core") == 3
        assert decide_module(engine, session_id, "extra", "master", "Eve Extra") == 1
        assert _statuses(engine, session_id) == ("ready", "syncing")
        result = run_sync(engine, replica)
    assert result.status == SessionStatus.DONE and result.status == "done"
    assert _statuses(engine, session_id) == ("done", "retired")
    session_moves = [m for m in moves["sync_session"] if m[0] != m[1]]
    assert ("ready", "loading") in session_moves and ("loading", "done") in session_moves
    assert ("syncing", "retired") in moves["sync_replica"]
    wrong = [m for m in moves["sync_session"] if not may_move(SESSION_MOVES, *m)]
    wrong += [m for m in moves["sync_replica"] if not may_move(REPLICA_MOVES, *m)]
    assert wrong == []
    # Closed and retired are final: nothing leaves them.
    assert not any(may_move(SESSION_MOVES, s, n) for s in records.CLOSED_STATUSES for n in SessionStatus)
    assert not any(may_move(REPLICA_MOVES, ReplicaStatus.RETIRED, n) for n in ReplicaStatus)
    # The load wrote what the decisions said: local for core, the master's title kept for extra.
    assert row(engine, "parent", id=2)["name"] == "Local name"
    assert row(engine, "tagged", code="A", version=1)["title"] == "Master title"


def test_a_later_field_decision_replaces_the_row_decision_for_that_field_only(master_url: str, tmp_path: Path) -> None:
    engine, _replica, _session_id, ids = make_review_master(master_url, tmp_path)
    pair = ids["pair"]  # parent 1: city and name changed on both sides
    decide(engine, pair, "local", "Ada Core")
    decide(engine, pair, "master", "Root Admin", "city")
    with engine.connect() as conn:
        history = records.decision_history(conn, [pair])[pair]
    assert [(h["field"], h["choice"], h["decided_by"]) for h in history] == [
        (None, "local", "Ada Core"),
        ("city", "master", "Root Admin"),
    ]
    names = ["city", "name"]
    in_force = records.decisions_in_force(history, names)
    assert {n: (e["choice"], e["decided_by"]) for n, e in in_force.items()} == {
        "city": ("master", "Root Admin"),
        "name": ("local", "Ada Core"),
    }
    assert records.row_decision_in_force(history) is None
    current = resolve.current_decision(history, names)
    assert current.row is None and {n: c.choice for n, c in current.fields.items()} == {
        "city": "master",
        "name": "local",
    }
    # The public JSON (page, CLI, API) folds the same way, and so do the rules the page and the CLI apply.
    conflict = get_conflict(engine, pair)
    assert conflict["status"] == ConflictStatus.DECIDED
    assert conflict["decision"]["fields"] == {"city": {"take": "master"}, "name": {"take": "local"}}
    assert [resolve.decider(e) for e in resolve.in_force(conflict, "city")] == ["Root Admin"]
    assert sorted(resolve.decider(e) for e in resolve.in_force(conflict)) == ["Ada Core", "Root Admin"]
    other = resolve.decided_by_other(conflict, "name", "root admin")
    assert other is not None and other["by"] == "Ada Core"
    # A new row decision covers every field again.
    decide(engine, pair, "master", "Root Admin", seen_decision_id=records.latest_decision_id(engine, pair))
    with engine.connect() as conn:
        history = records.decision_history(conn, [pair])[pair]
    assert records.row_decision_in_force(history) is not None
    assert {e["choice"] for e in records.decisions_in_force(history, names).values()} == {"master"}
    assert resolve.in_force(get_conflict(engine, pair), "name")[0]["by"] == "Root Admin"
