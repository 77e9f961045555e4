"""A small sync launched the way the Dagster UI launches it, against the engine on the same data.

    .venv/bin/python bench/bench_dagster_ui.py              # 3 changes, --repeat 3
    .venv/bin/python bench/bench_dagster_ui.py --changes 5 --repeat 5

Starts a real `dagster-webserver` on a temporary DAGSTER_HOME (default run launcher: every run is a
fresh `dagster api execute_run` process, as in production; the default run coordinator, so no daemon
is needed and no sensor races the launches) and launches, for a replica of the demo master, through
the GraphQL mutation `launchRun` as the Launch button does: the job `sync` (detect and load in one
run), and for comparison `sync_detect` then `sync_apply` (two runs). A figure is the wall-clock time
from the first launch until the last run reports SUCCESS. The baselines, on identical masters and
replicas: the engine's `run_sync`, and the CLI's path (`materialize_sync`, sync_detect + sync_apply
executed in process), both timed inside a warm process. Timings are wall-clock seconds, medians of
--repeat; no figure is asserted anywhere. Where a UI launch's time goes is printed from the run's own
event log (last attempt): process start (spawn, imports, instance) and the slowest step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sync_pipeline.demo import DEMO_SETTINGS, build_master, demo_metadata  # noqa: E402
from sync_pipeline.engine.checkout import checkout  # noqa: E402
from sync_pipeline.engine.master import connect_master, init_master  # noqa: E402
from sync_pipeline.engine.session import run_sync  # noqa: E402
from sync_pipeline.engine.settings import parse_settings  # noqa: E402

AUTOMATIC_SETTINGS = DEMO_SETTINGS.replace("policy: manual", "policy: local_wins")
LOCATION = "sync_pipeline.definitions"
LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""
STATUS = "query Status($id: ID!) { runOrError(runId: $id) { __typename ... on Run { status } } }"
# The default run coordinator launches a run as soon as it is submitted (the queued one needs the daemon).
DAGSTER_YAML = """\
telemetry:
  enabled: false
nux:
  enabled: false
run_coordinator:
  module: dagster._core.run_coordinator
  class: DefaultRunCoordinator
"""


def prepare(folder: Path, changes: int) -> tuple[str, Path, str]:
    """A demo master (SQLite), a replica, and `changes` phone numbers edited in the replica."""
    folder.mkdir(parents=True)
    url = f"sqlite:///{folder / 'master.db'}"
    engine = connect_master(url, must_exist=False)
    build_master(engine)
    init_master(engine, parse_settings(AUTOMATIC_SETTINGS, "bench-settings.yaml"))
    replica = folder / "replica.db"
    replica_id = checkout(engine, replica, "Bench Field").replica_id
    engine.dispose()
    contact = demo_metadata().tables["contact"]
    local = sa.create_engine(f"sqlite:///{replica}")
    with local.begin() as conn:
        for number in range(1, changes + 1):
            conn.execute(sa.update(contact).where(contact.c.id == number).values(phone=f"+49 170 {number:07d}"))
    local.dispose()
    return url, replica, replica_id


def ask(port: int, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as answer:
        return json.loads(answer.read())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_webserver(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "dagster-webserver"),
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"dagster-webserver exited with {server.returncode}")
        try:
            answer = ask(port, "{ repositoriesOrError { __typename } }")
            if answer["data"]["repositoriesOrError"]["__typename"] == "RepositoryConnection":
                return server, port
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("dagster-webserver did not start")


def launch_and_wait(port: int, job: str, replica_id: str, run_config: dict[str, Any]) -> str:
    params = {
        "selector": {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "jobName": job},
        "runConfigData": run_config,
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": replica_id}]},
    }
    answer = ask(port, LAUNCH, {"params": params})["data"]["launchRun"]
    if answer["__typename"] != "LaunchRunSuccess":
        raise SystemExit(f"launching {job} failed: {answer}")
    run_id = answer["run"]["runId"]
    while True:
        status = ask(port, STATUS, {"id": run_id})["data"]["runOrError"]["status"]
        if status == "SUCCESS":
            return str(run_id)
        if status in ("FAILURE", "CANCELED"):
            raise SystemExit(f"{job} run {run_id} ended {status}")
        time.sleep(0.1)


def measure_ui(folder: Path, changes: int, repeat: int, one_run: bool) -> tuple[list[float], list[str]]:
    """The launch times, and where the last attempt's time went (from the runs' event logs)."""
    mode = "one" if one_run else "two"
    home = folder / f"dagster_home_{mode}"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(DAGSTER_YAML, encoding="utf-8")
    env = {**os.environ, "DAGSTER_HOME": str(home), "SYNC_HOME": str(folder / "sync_home")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    server, port = start_webserver(env)
    import dagster as dg

    times, run_ids = [], []
    try:
        for attempt in range(repeat):
            url, replica, replica_id = prepare(folder / f"ui-{mode}-{attempt}", changes)
            # Each attempt has a master of its own, named in the run config (a SQLite file, no password).
            with dg.DagsterInstance.from_config(str(home)) as instance:
                instance.add_dynamic_partitions("replicas", [replica_id])
            master = {"master": {"config": {"url": url}}}
            detect_config = {"ops": {"local_changes": {"config": {"replica_path": str(replica)}}}, "resources": master}
            started = time.perf_counter()
            if one_run:
                run_ids = [launch_and_wait(port, "sync", replica_id, detect_config)]
            else:
                run_ids = [
                    launch_and_wait(port, "sync_detect", replica_id, detect_config),
                    launch_and_wait(port, "sync_apply", replica_id, {"resources": master}),
                ]
            times.append(time.perf_counter() - started)
            assert_done(url)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            breakdown = [where_the_time_went(instance, run_id) for run_id in run_ids]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    return times, breakdown


def where_the_time_went(instance: Any, run_id: str) -> str:
    """Launch to the run process's start, its steps, and the slowest step, from the run's event log."""
    record = instance.get_run_record_by_id(run_id)
    created = record.create_timestamp.timestamp()
    seen: dict[str, float] = {}
    starts: dict[str, float] = {}
    steps: list[tuple[float, str]] = []
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None:
            continue
        seen.setdefault(event.event_type_value, entry.timestamp)
        if event.event_type_value == "STEP_START":
            starts[entry.step_key or ""] = entry.timestamp
        elif event.event_type_value == "STEP_SUCCESS" and entry.step_key in starts:
            steps.append((entry.timestamp - starts[entry.step_key], entry.step_key or ""))
    started = seen.get("PIPELINE_START", created)
    ended = seen.get("PIPELINE_SUCCESS", started)
    slowest = max(steps, default=(0.0, "-"))
    return (
        f"{record.dagster_run.job_name}: launch to process up {started - created:.2f} s, run {ended - started:.2f} s "
        f"({len(steps)} steps, slowest {slowest[1]} {slowest[0]:.2f} s)"
    )


def assert_done(url: str) -> None:
    from sync_pipeline.engine import store

    engine = connect_master(url)
    with engine.connect() as conn:
        status = conn.execute(sa.select(store.sync_session.c.status)).scalar_one()
    engine.dispose()
    if status != "done":
        raise SystemExit(f"the session ended {status}, not done")


def measure_engine(folder: Path, changes: int, repeat: int) -> list[float]:
    times = []
    for attempt in range(repeat):
        url, replica, _replica_id = prepare(folder / f"engine-{attempt}", changes)
        engine = connect_master(url)
        started = time.perf_counter()
        result = run_sync(engine, replica)
        times.append(time.perf_counter() - started)
        engine.dispose()
        if result.status != "done":
            raise SystemExit(f"run_sync ended {result.status}: {result.message}")
    return times


def measure_cli_path(folder: Path, changes: int, repeat: int) -> list[float]:
    import dagster as dg

    from sync_pipeline.dagster_run import materialize_sync

    times = []
    with dg.instance_for_test() as instance:
        for attempt in range(repeat + 1):  # the first attempt warms the process (imports GX): not counted
            url, replica, _replica_id = prepare(folder / f"cli-{attempt}", changes)
            started = time.perf_counter()
            result = materialize_sync(url, str(replica), instance)
            if attempt:
                times.append(time.perf_counter() - started)
            if result.status != "done":
                raise SystemExit(f"materialize_sync ended {result.status}: {result.message}")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=3)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-dagster-ui-"))
    os.environ["SYNC_HOME"] = str(folder / "sync_home")
    try:
        engine = measure_engine(folder, args.changes, args.repeat)
        cli = measure_cli_path(folder, args.changes, args.repeat)
        one, one_breakdown = measure_ui(folder, args.changes, args.repeat, one_run=True)
        two, two_breakdown = measure_ui(folder, args.changes, args.repeat, one_run=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rows = [
        ("engine run_sync (in a warm process)", engine),
        ("CLI path: materialize_sync, both jobs in process (warm)", cli),
        ("UI: launchRun sync (one run) via GraphQL, to SUCCESS", one),
        ("UI: launchRun sync_detect + sync_apply via GraphQL, to SUCCESS", two),
    ]
    print(f"small sync of {args.changes} changes, median of {args.repeat} (seconds)")
    for name, values in rows:
        print(f"  {name:<64} {statistics.median(values):6.2f}   runs: {', '.join(f'{v:.2f}' for v in values)}")
    print(f"  UI (sync, one run) minus engine: {statistics.median(one) - statistics.median(engine):.2f} s")
    print("where the time went (last attempt):")
    for line in one_breakdown + two_breakdown:
        print(f"  {line}")


if __name__ == "__main__":
    main()
