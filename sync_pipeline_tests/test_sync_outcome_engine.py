"""The engine's own path (`sync --without-dagster`): once the load committed, the sync is done, whatever
fails after it; a done session is never marked failed."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

import sync_pipeline.engine.run_driver as run_driver
from sync_pipeline.cli import main
from sync_pipeline.engine import store
from sync_pipeline.engine.errors import ReplicaError
from sync_pipeline.engine.session import mark_failed, run_sync
from sync_pipeline_tests.helpers import make_master, make_replica, replica_engine, row, rows


def _edited_replica(engine: sa.Engine, folder: Path) -> Path:
    replica = make_replica(engine, folder)
    with replica_engine(replica).begin() as r:
        r.execute(sa.text("UPDATE parent SET city = 'Local' WHERE id = 1"))
    return replica


def test_a_file_that_cannot_be_retired_after_the_commit_still_reports_done(
    master_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_master(master_url)
    replica = _edited_replica(engine, tmp_path)

    def unwritable(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(replica))

    monkeypatch.setattr(run_driver, "retire_replica", unwritable)
    result = CliRunner().invoke(
        main, ["sync", "--master", master_url, "--replica", str(replica), "--without-dagster", "--json"]
    )
    monkeypatch.undo()

    assert result.exit_code == 0, result.output
    assert '"status": "done"' in result.output and "could not be marked retired" in result.output
    assert row(engine, "parent", id=1)["city"] == "Local"
    assert [s["status"] for s in rows(engine, "sync_session")] == ["done"]
    assert [r["status"] for r in rows(engine, "sync_replica")] == ["retired"]
    # The next sync only finishes retiring the file (nothing is loaded twice); after that, refused.
    assert run_sync(engine, replica).status == "done"
    assert [s["status"] for s in rows(engine, "sync_session")] == ["done"]
    with pytest.raises(ReplicaError, match="retired"):
        run_sync(engine, replica)


def test_a_done_session_is_never_marked_failed(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url)
    replica = _edited_replica(engine, tmp_path)
    result = run_sync(engine, replica)
    assert result.status == "done"

    mark_failed(engine, result.session_id, result.replica_id, "a step after the commit failed")

    with engine.connect() as conn:
        status, error = conn.execute(sa.select(store.sync_session.c.status, store.sync_session.c.error)).one()
    assert (status, error) == ("done", None)
    assert [r["status"] for r in rows(engine, "sync_replica")] == ["retired"]
    with pytest.raises(ReplicaError, match="retired"):
        run_sync(engine, replica)


def test_the_masters_record_not_the_file_decides_whether_the_file_was_retired(master_url: str, tmp_path: Path) -> None:
    # The process died after writing "retired" into the file and before the master recorded it: the file's
    # word is not taken; the master's record (loaded, file not retired) finishes the retirement and says done.
    engine = make_master(master_url)
    replica = _edited_replica(engine, tmp_path)
    assert run_sync(engine, replica).status == "done"
    with engine.begin() as conn:
        conn.execute(sa.update(store.sync_replica).values(file_retired_at=None))

    again = run_sync(engine, replica)

    assert again.status == "done"
    assert [s["status"] for s in rows(engine, "sync_session")] == ["done"]  # nothing loaded twice
    assert row(engine, "parent", id=1)["city"] == "Local"
    assert rows(engine, "sync_replica")[0]["file_retired_at"] is not None
    with pytest.raises(ReplicaError, match="retired"):
        run_sync(engine, replica)
