"""A master whose sync tables an older version created: a clear request to upgrade, then init-master does it."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from click.testing import CliRunner

from sync_pipeline.cli import main
from sync_pipeline.engine import store
from sync_pipeline_tests.helpers import make_master, make_replica, rows, settings_yaml


def test_outdated_sync_tables_ask_for_init_master_then_work(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url)
    replica = make_replica(engine, tmp_path)
    with engine.begin() as conn:  # as the version before file_retired_at and the tombstones
        conn.execute(sa.text("ALTER TABLE sync_replica DROP COLUMN file_retired_at"))
        conn.execute(sa.schema.DropTable(store.sync_tombstone))

    refused = CliRunner().invoke(main, ["replicas", "--master", master_url])
    assert refused.exit_code == 2, refused.output
    assert "older version" in refused.output and "sync_replica.file_retired_at" in refused.output
    assert "sync_tombstone" in refused.output and "init-master" in refused.output
    assert "Traceback" not in refused.output

    settings = tmp_path / "sync.yaml"
    settings.write_text(settings_yaml("master_wins"), encoding="utf-8")
    upgraded = CliRunner().invoke(main, ["init-master", "--master", master_url, "--settings", str(settings)])
    assert upgraded.exit_code == 0, upgraded.output
    listed = CliRunner().invoke(main, ["replicas", "--master", master_url])
    assert listed.exit_code == 0, listed.output
    assert [r["status"] for r in rows(engine, "sync_replica")] == ["offline"]
    synced = CliRunner().invoke(main, ["sync", "--master", master_url, "--replica", str(replica), "--without-dagster"])
    assert synced.exit_code == 0, synced.output
    assert [r["status"] for r in rows(engine, "sync_replica")] == ["retired"]
