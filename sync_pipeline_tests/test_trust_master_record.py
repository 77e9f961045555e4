"""The master's own record decides (issue 11, points 2 and 3), on SQLite and PostgreSQL masters.

- Bases are checked, not believed: with master change capture on, a field the master's clock shows
  changed after the checkout is a master change, whatever base the replica's change log claims.
- Deleted master rows keep a tombstone: an orphan decided 'local' re-creates its parent from the
  master's image of the deleted row, never from the replica's row; without a tombstone the child is
  dropped and the protocol says why.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import sqlalchemy as sa

from sync_pipeline.engine import store
from sync_pipeline.engine.protocol import build_protocol
from sync_pipeline.engine.queries import list_conflicts
from sync_pipeline.engine.retention import purge_sync_history
from sync_pipeline.engine.session import decide, run_sync
from sync_pipeline.reports import render_markdown
from sync_pipeline_tests.helpers import TABLES, make_master, make_replica, pause, row


def _forge_log_base(replica: Path, table: str, column: str, value: object) -> None:
    """What an attacker does to the replica's change log: claim another base value for a field."""
    conn = sqlite3.connect(replica)
    with conn:
        changed = conn.execute(
            "UPDATE _sync_log SET old_values = json_set(old_values, ?, ?) "
            "WHERE table_name = ? AND old_values IS NOT NULL",
            (f"$.{column}", value, table),
        ).rowcount
    conn.close()
    assert changed >= 1


def _edit_outside_the_log(replica: Path, sql: str, *params: object) -> None:
    """A worker who drops the change-log triggers, edits, and puts them back: the log never sees it."""
    conn = sqlite3.connect(replica)
    with conn:
        triggers = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'").fetchall()
        for name, _ in triggers:
            conn.execute(f'DROP TRIGGER "{name}"')
        conn.execute(sql, params)
        for _, definition in triggers:
            conn.execute(definition)
    conn.close()


# ------------------------------------------------------------------------------------------------
# 11.2 Bases are checked, not believed
# ------------------------------------------------------------------------------------------------


def test_forged_base_does_not_hide_a_master_update_update_update(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url, "manual")
    replica = make_replica(engine, tmp_path)
    pause()
    with engine.begin() as conn:
        conn.execute(sa.update(TABLES["parent"]).where(TABLES["parent"].c.id == 1).values(city="Master City"))
    with sqlite3.connect(replica) as conn:
        conn.execute("UPDATE parent SET city = 'Laptop City' WHERE id = 1")
    # The log now claims the base was the master's current value: no master change to see by values.
    _forge_log_base(replica, "parent", "city", "Master City")

    result = run_sync(engine, replica)

    assert result.status == "waiting"
    conflicts = list_conflicts(engine, result.session_id)
    assert [(c["table"], c["kind"]) for c in conflicts] == [("parent", "update_update")]
    assert [f["name"] for f in conflicts[0]["fields"]] == ["city"]
    assert row(engine, "parent", id=1)["city"] == "Master City"


def test_forged_base_does_not_hide_a_master_update_from_a_local_delete(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url, "manual")
    replica = make_replica(engine, tmp_path)
    pause()
    tagged = TABLES["tagged"]
    with engine.begin() as conn:
        conn.execute(sa.update(tagged).where(tagged.c.code == "A").values(title="Master title"))
    with sqlite3.connect(replica) as conn:
        conn.execute("DELETE FROM tagged WHERE code = 'A' AND version = 1")
    _forge_log_base(replica, "tagged", "title", "Master title")

    result = run_sync(engine, replica)

    assert result.status == "waiting"
    conflicts = list_conflicts(engine, result.session_id)
    assert [(c["table"], c["kind"]) for c in conflicts] == [("tagged", "delete_update")]
    assert "title" in [f["name"] for f in conflicts[0]["fields"]]
    assert row(engine, "tagged", code="A", version=1)["title"] == "Master title"


def test_an_unforged_log_still_applies_where_the_master_did_not_change(master_url: str, tmp_path: Path) -> None:
    # The clock only adds master changes: an edit of a field the master left alone still applies.
    engine = make_master(master_url, "manual")
    replica = make_replica(engine, tmp_path)
    pause()
    with engine.begin() as conn:
        conn.execute(sa.update(TABLES["parent"]).where(TABLES["parent"].c.id == 1).values(city="Master City"))
    with sqlite3.connect(replica) as conn:
        conn.execute("UPDATE parent SET name = 'Laptop name' WHERE id = 1")

    result = run_sync(engine, replica)

    assert result.status == "done"
    assert row(engine, "parent", id=1) | {} == {
        "id": 1,
        "name": "Laptop name",
        "city": "Master City",
        "email": "p1@example.com",
    }


# ------------------------------------------------------------------------------------------------
# 11.3 Deleted master rows keep a tombstone
# ------------------------------------------------------------------------------------------------


def _orphan_after_master_delete(master_url: str, tmp_path: Path) -> tuple[sa.Engine, Path]:
    """The master deletes parent 3 (and its children); the replica adds a child of parent 3 and edits
    parent 3 outside its change log."""
    engine = make_master(master_url, "manual")
    replica = make_replica(engine, tmp_path)
    pause()
    with engine.begin() as conn:
        conn.execute(sa.delete(TABLES["child"]).where(TABLES["child"].c.parent_id == 3))
        conn.execute(sa.delete(TABLES["parent"]).where(TABLES["parent"].c.id == 3))
    with sqlite3.connect(replica) as conn:
        conn.execute("INSERT INTO child (id, parent_id, label, amount) VALUES (900, 3, 'new', 9.5)")
    _edit_outside_the_log(replica, "UPDATE parent SET name = 'EVIL CORP', city = 'Nowhere' WHERE id = 3")
    return engine, replica


def test_master_delete_keeps_a_tombstone_with_every_column(master_url: str, tmp_path: Path) -> None:
    engine, _ = _orphan_after_master_delete(master_url, tmp_path)
    with engine.connect() as conn:
        stones = conn.execute(sa.select(store.sync_tombstone).where(store.sync_tombstone.c.table_name == "parent"))
        stones = [dict(r._mapping) for r in stones]
    assert len(stones) == 1
    assert stones[0]["row_key"] == "3"
    assert json.loads(stones[0]["row_image"]) == {"id": 3, "name": "P3", "city": "Base", "email": "p3@example.com"}
    assert dt.datetime.fromisoformat(stones[0]["deleted_at"])
    if engine.dialect.name == "postgresql":
        who = json.loads(stones[0]["deleted_by"])
        assert who["current_user"] == who["session_user"] == "postgres"
        assert "application_name" in who
    else:
        assert stones[0]["deleted_by"] is None  # SQLite knows no user


def test_orphan_decided_local_recreates_the_parent_from_the_master_tombstone(master_url: str, tmp_path: Path) -> None:
    engine, replica = _orphan_after_master_delete(master_url, tmp_path)

    waiting = run_sync(engine, replica)
    assert waiting.status == "waiting"
    (conflict,) = list_conflicts(engine, waiting.session_id)
    assert conflict["kind"] == "orphan"
    decide(engine, conflict["id"], "local", "Quinn Reviewer")
    done = run_sync(engine, replica)

    assert done.status == "done"
    # The master's own values came back, not the laptop's edit made outside the change log.
    assert row(engine, "parent", id=3) == {"id": 3, "name": "P3", "city": "Base", "email": "p3@example.com"}
    assert row(engine, "child", id=900)["parent_id"] == 3
    protocol = build_protocol(engine, done.session_id)
    (record,) = protocol.conflicts
    assert "re-created from the master's tombstone" in record.outcome
    assert "EVIL CORP" not in render_markdown(protocol)
    assert record.detail["parent_source"] == "tombstone"


def test_orphan_whose_tombstone_is_gone_drops_the_child_and_says_why(master_url: str, tmp_path: Path) -> None:
    engine, replica = _orphan_after_master_delete(master_url, tmp_path)
    with engine.begin() as conn:  # as retention leaves it once the window has passed
        conn.execute(sa.delete(store.sync_tombstone))

    waiting = run_sync(engine, replica)
    assert waiting.status == "waiting"
    (conflict,) = list_conflicts(engine, waiting.session_id)
    decide(engine, conflict["id"], "local", "Quinn Reviewer")
    done = run_sync(engine, replica)

    assert done.status == "done"
    assert row(engine, "parent", id=3) is None  # never from the replica's row
    assert row(engine, "child", id=900) is None
    protocol = build_protocol(engine, done.session_id)
    (record,) = protocol.conflicts
    assert record.outcome.startswith("not written")
    assert "kept no image" in record.detail["parent_missing"]
    assert "kept no image" in render_markdown(protocol)


def test_retention_purges_tombstones_older_than_its_window(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url, "manual")
    with engine.begin() as conn:
        conn.execute(sa.delete(TABLES["child"]).where(TABLES["child"].c.parent_id.in_([4, 5])))
        conn.execute(sa.delete(TABLES["parent"]).where(TABLES["parent"].c.id.in_([4, 5])))
        conn.execute(
            sa.update(store.sync_tombstone)
            .where(store.sync_tombstone.c.table_name == "parent", store.sync_tombstone.c.row_key == "4")
            .values(deleted_at="2001-01-01T00:00:00.000000")
        )
    counts = purge_sync_history(engine, days=30)
    with engine.connect() as conn:
        left = conn.execute(
            sa.select(store.sync_tombstone.c.table_name, store.sync_tombstone.c.row_key).order_by(
                store.sync_tombstone.c.table_name, store.sync_tombstone.c.row_key
            )
        ).all()
    assert counts["sync_tombstone"] == 1
    assert ("parent", "4") not in left and ("parent", "5") in left
