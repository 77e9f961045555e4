"""The demo: every conflict kind appears, the manual module waits, the rest is settled, and the printed
next steps finish the sync.
"""

from __future__ import annotations

import re
import shlex
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
    commands = [shlex.split(line, comments=True) for line in output.splitlines() if "sync-pipeline" in line]
    # The program as printed: `sync-pipeline` on PATH, else this installation's path.
    programs = {c[0] for c in commands if c}
    assert all(p == "sync-pipeline" or (p.endswith("/sync-pipeline") and Path(p).is_file()) for p in programs)
    bulk = next(c for c in commands if "--module" in c and "crm" in c)
    sync = next(c for c in commands if c[1] == "sync")
    decided = CliRunner().invoke(main, bulk[1:])
    assert decided.exit_code == 0 and "decided 5 pending conflict(s)" in decided.output
    finished = CliRunner().invoke(main, sync[1:])
    assert finished.exit_code == 0, finished.output
    assert ": done" in finished.output
    # The sync says where the protocol files are, and they are there.
    written = re.search(r"protocol written to (\S+)/: (.*)", finished.output)
    assert written, finished.output
    names = written.group(2).split(", ")
    assert len(names) == 3 and all(  # JSON, Markdown, HTML; the PDF is printed on demand
        (Path(written.group(1)) / name).is_file() for name in names
    )


def test_demo_hints_name_an_existing_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once an account exists, the printed steps name it (an unknown `--by "Your Name"` would fail)."""
    home = tmp_path / "home"
    monkeypatch.setenv("SYNC_HOME", str(home))
    added = CliRunner().invoke(
        main, ["accounts", "add", "--name", "Dana Lead", "--modules", "*", "--password-stdin"], input="pw-12345678\n"
    )
    assert added.exit_code == 0, added.output
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 0, result.output
    commands = [shlex.split(line, comments=True) for line in result.output.splitlines() if " conflicts " in line]
    assert commands and all(c[c.index("--by") + 1] == "Dana Lead" for c in commands)
    assert "accounts add" not in result.output
    listed = CliRunner().invoke(main, next(c for c in commands if c[1:3] == ["conflicts", "list"])[1:])
    assert listed.exit_code == 0 and "[pending] crm/" in listed.output


def test_demo_refuses_to_overwrite_a_real_master(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "master.db").write_bytes(b"")
    import sqlite3

    sqlite3.connect(home / "master.db").execute("CREATE TABLE precious (x INTEGER)").connection.commit()
    monkeypatch.setenv("SYNC_HOME", str(home))
    result = CliRunner().invoke(main, ["demo"])
    assert result.exit_code == 2 and "is not a demo master" in result.output
