"""The Dagster instance's `dagster.yaml`, written into an instance folder that has none.

Without one, every Dagster command warns "No dagster instance configuration file" and the UI opens with
its newsletter dialog (the "nux"). The file also makes runs launched from the UI and the sensors start
warm (`defs/run_launcher.py`) and leave the queue within a second. Written by `sync-pipeline` commands
that record runs and when the code location loads, never over a file that exists (a team's own storage
settings stay).
"""

from __future__ import annotations

import os
from pathlib import Path

DAGSTER_YAML = """\
# Dagster instance of sync_pipeline: run history, event logs and schedules in SQLite files here.
# Start the UI on it with:  DAGSTER_HOME={home} dagster dev -w workspace.yaml
telemetry:
  enabled: false
nux:
  enabled: false

# Each run is a process of its own, forked from a process that imported Dagster, Great Expectations and
# pandas once (docs/dagster.md, "Warm run processes"). Dagster's own launcher instead:
#   run_launcher: {{module: dagster, class: DefaultRunLauncher}}
run_launcher:
  module: sync_pipeline.defs.run_launcher
  class: WarmRunLauncher

# Runs launched from the UI and by the sensors wait in Dagster's queue until the daemon starts them:
# checked every second instead of every 5 s, a share of a small sync's time.
run_coordinator:
  module: dagster._core.run_coordinator
  class: QueuedRunCoordinator
  config:
    dequeue_interval_seconds: 1

# A run whose process died is marked failed even when the process that launched it restarted meanwhile.
run_monitoring:
  enabled: true
  poll_interval_seconds: 30
  max_resume_run_attempts: 0
"""


def write_instance_config(home: Path) -> bool:
    """Write `home/dagster.yaml` if the folder has none; True if it was written."""
    config = home / "dagster.yaml"
    if config.exists() or config.is_symlink():
        return False
    try:
        with open(config, "x", encoding="utf-8") as out:  # "x": never over a file made meanwhile
            out.write(DAGSTER_YAML.format(home=home))
    except FileExistsError:
        return False
    return True


def write_configured_instance_config() -> bool:
    """For the code location's load: the folder `$DAGSTER_HOME` names, when it exists and has no config.
    (The running webserver read its settings already; the file serves every later command and start.)"""
    configured = os.environ.get("DAGSTER_HOME")
    if not configured:
        return False
    home = Path(configured).expanduser()
    if not home.is_dir():
        return False
    try:
        written = write_instance_config(home)
        if written:
            mark_newsletter_seen(home)
        return written
    except OSError:
        return False  # a read-only instance folder: Dagster's own warning says enough


def mark_newsletter_seen(home: Path) -> None:
    """Record the UI's newsletter dialog as seen, as the UI does when it is dismissed: the webserver read
    its dagster.yaml before the code location loaded, but asks for this file on every page load."""
    seen = home / ".nux" / "nux.yaml"
    if not seen.exists():
        seen.parent.mkdir(exist_ok=True)
        seen.write_text("seen: 1\n", encoding="utf-8")
