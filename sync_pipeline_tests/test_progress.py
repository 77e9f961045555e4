"""Progress of a sync: the engine's process-wide hook, and the CLI's bars that show it only in a terminal."""

from __future__ import annotations

import io
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from sync_pipeline.engine.progress import STAGES, listening, report
from sync_pipeline.progress import checkout_progress, sync_progress
from sync_pipeline_tests.helpers import TABLES, make_master, make_replica, replica_engine

# The CLI in this interpreter, as the `sync-pipeline` script runs it.
SYNC_PIPELINE = [sys.executable, "-c", "from sync_pipeline.cli import main; main()"]


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal and keeps what is written to it."""

    def isatty(self) -> bool:
        return True


def test_reports_reach_a_listener_only_while_it_listens() -> None:
    heard: list[tuple[str, int, int]] = []
    report("extract", 0, 3)  # nobody listens: nothing happens
    with listening(lambda *args: heard.append(args)):
        report("extract", 1, 3)
        report("load", 2, 2)
    report("extract", 3, 3)
    assert heard == [("extract", 1, 3), ("load", 2, 2)]


def test_a_listener_is_removed_when_its_block_fails() -> None:
    heard: list[tuple[str, int, int]] = []
    with pytest.raises(RuntimeError), listening(lambda *args: heard.append(args)):
        raise RuntimeError("the sync failed")
    report("extract", 1, 1)
    assert heard == []


def test_no_terminal_no_output(monkeypatch: pytest.MonkeyPatch) -> None:
    # As when stderr is a pipe or a log file (set here, so that `pytest -s` in a terminal passes too).
    stdout, stderr = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    with sync_progress() as above_bars:
        report("extract", 1, 2)
        report("load", 2, 2)
    with checkout_progress() as copied:
        pass
    assert above_bars is None and copied is None
    assert (stdout.getvalue(), stderr.getvalue()) == ("", "")


def test_bars_show_each_reported_stage_on_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.delenv("TERM", raising=False)  # a "dumb" TERM would make rich hold back the live display
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with sync_progress() as above_bars:
        assert above_bars is not None
        above_bars("extracting local changes")
        report("extract", 1, 4)
        report("extract", 4, 4)
        report("load", 3, 7)
    shown = terminal.getvalue()
    assert "… extracting local changes" in shown
    assert STAGES["extract"] in shown and "4/4" in shown
    assert STAGES["load"] in shown and "3/7" in shown
    assert STAGES["detect"] not in shown  # a stage gets its bar when it first reports, not before
    report("detect", 1, 1)  # the bars stopped listening with their block
    assert STAGES["detect"] not in terminal.getvalue()


def _in_a_terminal(args: list[str], cwd: Path) -> tuple[int, str, str]:
    """Run a command with stderr on a pseudo-terminal and stdout on a pipe; returns code, stdout, terminal."""
    leader, follower = os.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120", "DAGSTER_HOME": str(cwd)}
    env.pop("NO_COLOR", None)
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=follower, stdin=subprocess.DEVNULL, env=env) as child:
        os.close(follower)
        # Read while the command runs: a full pseudo-terminal buffer would block it. The deadline only
        # keeps a hung command from hanging the test run.
        seen, deadline = bytearray(), time.monotonic() + 120
        while time.monotonic() < deadline:
            if not select.select([leader], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the command closed the terminal's last writer (Linux)
                break
            if not chunk:
                break
            seen += chunk
        stdout = child.stdout.read() if child.stdout else b""
        code = child.wait(timeout=120)
    os.close(leader)
    return code, stdout.decode(), seen.decode(errors="replace")


@pytest.mark.skipif(not hasattr(os, "openpty"), reason="needs pseudo-terminals")
def _replica_with_an_update_and_an_insert(engine: sa.Engine, folder: Path) -> Path:
    """A replica whose sync goes through every stage (verify needs an update, the load a write)."""
    replica = make_replica(engine, folder)
    parent = TABLES["parent"]
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(parent).where(parent.c.id == 1).values(city="Local"))
        r.execute(sa.insert(parent).values(id=6, name="P6", city="New", email="p6@example.com"))
    return replica


def test_sync_without_dagster_shows_stage_bars_in_a_terminal(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    engine = make_master(url)
    replica = _replica_with_an_update_and_an_insert(engine, tmp_path)

    code, stdout, terminal = _in_a_terminal(
        [*SYNC_PIPELINE, "sync", "--master", url, "--replica", str(replica), "--without-dagster"], tmp_path
    )

    assert code == 0, terminal
    assert "done (synchronised)" in stdout
    assert "━" not in stdout and "…" not in stdout, "bars and messages belong on stderr, results on stdout"
    lines = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", terminal).splitlines()  # without cursor moves and colours
    assert any(line.startswith("… ") for line in lines), "the engine's messages are shown too, above the bars"
    shown = [label for label in STAGES.values() if any(label in line for line in lines)]
    assert shown == list(STAGES.values()), f"stage bars missing from the terminal output:\n{terminal}"


def test_a_sync_reports_every_stage_to_its_end(master_url: str, tmp_path: Path) -> None:
    from sync_pipeline.engine.session import run_sync

    engine = make_master(master_url)
    replica = _replica_with_an_update_and_an_insert(engine, tmp_path)
    last: dict[str, tuple[int, int]] = {}
    with listening(lambda stage, done, total: last.__setitem__(stage, (done, total))):
        assert run_sync(engine, replica).status == "done"
    assert set(last) == set(STAGES)
    assert all(done == total > 0 for done, total in last.values()), last
