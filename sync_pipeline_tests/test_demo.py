"""The demo: every conflict kind appears, the manual module waits, the rest is settled, and the printed
next steps finish the sync.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from sync_pipeline.cli import main


def test_demo_shows_every_conflict_kind_and_its_next_steps_finish(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("SYNC_HOME", str(home))
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 0, result.output
    output = result.output
    for kind in ("update_update", "update_delete", "delete_update", "insert_insert", "duplicate", "orphan"):
        assert kind in output
    assert "waiting for decisions: crm 5" in output
    commands = [
        line.strip().split("   #")[0] for line in output.splitlines() if line.strip().startswith("sync-pipeline")
    ]
    bulk = next(c for c in commands if "--module crm" in c)
    sync = next(c for c in commands if c.startswith("sync-pipeline sync"))
    args = re.findall(r'"[^"]*"|\S+', bulk.replace("sync-pipeline ", "", 1))
    decided = CliRunner().invoke(main, [a.strip('"') for a in args])
    assert decided.exit_code == 0 and "decided 5 pending conflict(s)" in decided.output
    finished = CliRunner().invoke(main, sync.split()[1:] + ["--json"])
    assert finished.exit_code == 0, finished.output
    assert '"status": "done"' in finished.output


def test_demo_refuses_to_overwrite_a_real_master(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "master.db").write_bytes(b"")
    import sqlite3

    sqlite3.connect(home / "master.db").execute("CREATE TABLE precious (x INTEGER)").connection.commit()
    monkeypatch.setenv("SYNC_HOME", str(home))
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 2 and "is not a demo master" in result.output
