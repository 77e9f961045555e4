"""A small sync launched the way the Dagster UI and the sensors launch it, against the engine on the same data.

    .venv/bin/python bench/bench_dagster_ui.py              # 3 changes, --repeat 3, both launchers
    .venv/bin/python bench/bench_dagster_ui.py --changes 5 --repeat 5 --launcher warm

Starts `dagster dev` (webserver, daemon, code servers) on a temporary DAGSTER_HOME whose dagster.yaml is
the one the product writes (`defs/instance_config.py`: the warm run launcher, the run queue checked
every second); `--launcher default` swaps in Dagster's `DefaultRunLauncher` (each run a fresh process
the code server spawns), the figure before; `--immediate` replaces the queue with Dagster's
`DefaultRunCoordinator` (the webserver and the sensor daemon launch runs themselves). For a replica of
the demo master it launches, through the GraphQL mutation `launchRun` as the Launch button does, the job
`sync` (detect and load in one run), and for comparison `sync_detect` then `sync_apply` (two runs); a
figure is the wall-clock time from the first launch until the last run reports SUCCESS (the queue and
the daemon's launch included); the first launch after the start is timed apart (it creates the launcher:
ours starts its forkserver then). `approval_sensor` is stopped meanwhile, so that no sensor races the
launches. Then, sensors on (their interval set to 5 s), a replica file is dropped into the inbox:
`replica_sensor` launches `sync_detect` and `approval_sensor` `sync_apply`; that figure is the two runs'
time from their creation by the sensor to SUCCESS (the sensors' polling interval is a setting, not
counted). The baselines, on identical masters and replicas: the engine's `run_sync`, and the CLI's path
(`materialize_sync`, sync_detect + sync_apply executed in process), both timed inside a warm process.
Timings are wall-clock seconds, medians of --repeat; no figure is asserted anywhere. Where a run's time
went is printed from its own event log (last attempt): the queue, the launch until the run process is
up, and the slowest step.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
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
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sync_pipeline.defs.instance_config import write_instance_config  # noqa: E402
from sync_pipeline.demo import DEMO_SETTINGS, build_master, demo_metadata  # noqa: E402
from sync_pipeline.engine.checkout import checkout  # noqa: E402
from sync_pipeline.engine.master import connect_master, init_master  # noqa: E402
from sync_pipeline.engine.session import run_sync  # noqa: E402
from sync_pipeline.engine.settings import parse_settings  # noqa: E402
from sync_pipeline_tests.test_dagster_webserver import stop_process_group  # noqa: E402

AUTOMATIC_SETTINGS = DEMO_SETTINGS.replace("policy: manual", "policy: local_wins")
LOCATION = "sync_pipeline.definitions"
REPOSITORY = {"repositoryLocationName": LOCATION, "repositoryName": "__repository__"}
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
SENSOR = "query Sensor($s: SensorSelector!) { sensorOrError(sensorSelector: $s) { ... on Sensor { id } } }"
STOP_SENSOR = "mutation Stop($id: String!) { stopSensor(id: $id) { __typename } }"
START_SENSOR = "mutation Start($s: SensorSelector!) { startSensor(sensorSelector: $s) { __typename } }"
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


def instance_yaml(home: Path, launcher: str, immediate: bool) -> str:
    """The dagster.yaml the product writes; with `default`, Dagster's own run launcher instead of ours;
    `immediate`: no queue (runs launched by the webserver and the sensor daemon themselves)."""
    write_instance_config(home)
    config = yaml.safe_load((home / "dagster.yaml").read_text(encoding="utf-8"))
    if launcher == "default":
        config["run_launcher"] = {"module": "dagster", "class": "DefaultRunLauncher"}
    if immediate:
        config["run_coordinator"] = {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}
    return yaml.safe_dump(config)


def prepare(folder: Path, changes: int) -> tuple[str, Path, str]:
    """A demo master (SQLite), a replica, and `changes` phone numbers edited in the replica."""
    folder.mkdir(parents=True)
    url = f"sqlite:///{folder / 'master.db'}"
    engine = connect_master(url, must_exist=False)
    build_master(engine)
    init_master(engine, parse_settings(AUTOMATIC_SETTINGS, "bench-settings.yaml"))
    engine.dispose()
    replica, replica_id = edited_replica(url, folder / "replica.db", changes)
    return url, replica, replica_id


def edited_replica(url: str, replica: Path, changes: int) -> tuple[Path, str]:
    """A replica checked out of the master at `url`, with `changes` phone numbers edited."""
    engine = connect_master(url)
    replica_id = checkout(engine, replica, "Bench Field").replica_id
    engine.dispose()
    contact = demo_metadata().tables["contact"]
    local = sa.create_engine(f"sqlite:///{replica}")
    with local.begin() as conn:
        for number in range(1, changes + 1):
            conn.execute(sa.update(contact).where(contact.c.id == number).values(phone=f"+49 170 {number:07d}"))
    local.dispose()
    return replica, replica_id


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


def start_dagster_dev(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], int]:
    """`dagster dev` as a person starts it: the webserver, the daemon and their code servers."""
    port = free_port()
    command = [str(Path(sys.executable).parent / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1"]
    server = subprocess.Popen(
        [*command, "-p", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"dagster dev exited with {server.returncode}")
        try:
            answer = ask(port, "{ repositoriesOrError { __typename } }")
            if answer["data"]["repositoriesOrError"]["__typename"] == "RepositoryConnection":
                return server, port
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("dagster dev did not start")


stop = stop_process_group  # the tests' way of stopping `dagster dev` and what it started


def set_sensor(port: int, name: str, running: bool) -> None:
    selector = {**REPOSITORY, "sensorName": name}
    if running:
        ask(port, START_SENSOR, {"s": selector})
    else:
        sensor_id = ask(port, SENSOR, {"s": selector})["data"]["sensorOrError"]["id"]
        ask(port, STOP_SENSOR, {"id": sensor_id})


def wait_for(port: int, job: str, run_id: str) -> None:
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        status = ask(port, STATUS, {"id": run_id})["data"]["runOrError"]["status"]
        if status == "SUCCESS":
            return
        if status in FINISHED:
            raise SystemExit(f"{job} run {run_id} ended {status}")
        time.sleep(0.1)
    raise SystemExit(f"{job} run {run_id} did not finish")


def launch_and_wait(port: int, job: str, replica_id: str, run_config: dict[str, Any]) -> str:
    params = {
        "selector": {**REPOSITORY, "jobName": job},
        "runConfigData": run_config,
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": replica_id}]},
    }
    answer = ask(port, LAUNCH, {"params": params})["data"]["launchRun"]
    if answer["__typename"] != "LaunchRunSuccess":
        raise SystemExit(f"launching {job} failed: {answer}")
    run_id = str(answer["run"]["runId"])
    wait_for(port, job, run_id)
    return run_id


class Measured:
    """The figures of one `dagster dev`: UI launches of `sync`, of detect + apply, and sensor-launched syncs."""

    def __init__(self) -> None:
        self.first = 0.0
        self.one: list[float] = []
        self.two: list[float] = []
        self.sensor: list[float] = []
        self.breakdown: list[str] = []


def measure_dagster_dev(folder: Path, changes: int, repeat: int, launcher: str, immediate: bool) -> Measured:
    import dagster as dg

    home = folder / f"dagster_home_{launcher}"
    home.mkdir(parents=True)
    (home / "dagster.yaml").write_text(instance_yaml(home, launcher, immediate), encoding="utf-8")
    sensor_master, _replica, _replica_id = prepare(folder / f"sensor-{launcher}", changes)
    inbox = folder / f"inbox-{launcher}"
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "SYNC_HOME": str(folder / "sync_home"),
        "SYNC_MASTER_URL": sensor_master,
        "SYNC_INBOX": str(inbox),
        "SYNC_SENSOR_INTERVAL_SECONDS": "5",
    }
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    server, port = start_dagster_dev(env)
    measured = Measured()
    try:
        set_sensor(port, "approval_sensor", running=False)
        # The first launch after the start: the launching process creates its run launcher (ours starts
        # its forkserver then). Reported apart, not in the medians.
        measured.first, _lines = launch_from_ui(port, folder / f"ui-{launcher}-first", changes, True, home)
        for attempt in range(repeat):
            for one_run in (True, False):
                seconds, lines = launch_from_ui(
                    port, folder / f"ui-{launcher}-{attempt}-{int(one_run)}", changes, one_run, home
                )
                (measured.one if one_run else measured.two).append(seconds)
                if attempt == repeat - 1:
                    measured.breakdown += lines
        set_sensor(port, "approval_sensor", running=True)
        inbox.mkdir()
        for attempt in range(repeat):
            replica, _replica_id = edited_replica(
                sensor_master, folder / f"sensor-{launcher}" / f"r{attempt}.db", changes
            )
            shutil.copy2(replica, inbox / replica.name)  # its time stamp is old: taken at the next tick
            with dg.DagsterInstance.from_config(str(home)) as instance:
                runs = wait_for_sensor_runs(instance, attempt)
                measured.sensor.append(sum(seconds for seconds, _line in runs))
                if attempt == repeat - 1:
                    measured.breakdown += [line for _seconds, line in runs]
    finally:
        stop(server)
    return measured


def launch_from_ui(port: int, folder: Path, changes: int, one_run: bool, home: Path) -> tuple[float, list[str]]:
    """Launch one sync from the UI; the seconds until its last run succeeded, and where the time went."""
    import dagster as dg

    url, replica, replica_id = prepare(folder, changes)
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
    seconds = time.perf_counter() - started
    assert_done(url)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return seconds, ["UI " + where_the_time_went(instance, run_id)[1] for run_id in run_ids]


def wait_for_sensor_runs(instance: Any, attempt: int) -> list[tuple[float, str]]:
    """The sensor-launched detect and apply runs of the `attempt`-th dropped file, once both succeeded."""
    import dagster as dg

    sensors = {"sync_detect": "replica_sensor", "sync_apply": "approval_sensor"}
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        latest = []
        for job, sensor in sensors.items():
            found = instance.get_runs(dg.RunsFilter(job_name=job, tags={"dagster/sensor_name": sensor}))
            if len(found) > attempt:
                latest.append(found[0])  # newest first
        if len(latest) == len(sensors):
            if all(run.status == dg.DagsterRunStatus.SUCCESS for run in latest):
                return [where_the_time_went(instance, run.run_id, prefix="sensor ") for run in latest]
            if any(run.is_finished and run.status != dg.DagsterRunStatus.SUCCESS for run in latest):
                raise SystemExit(f"a sensor-launched run ended {[run.status for run in latest]}")
        time.sleep(0.2)
    raise SystemExit("the sensors did not launch and finish the sync")


def where_the_time_went(instance: Any, run_id: str, prefix: str = "") -> tuple[float, str]:
    """Its seconds from creation to success, and a line: queue, launch to process up, run, slowest step."""
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
    dequeued = seen.get("PIPELINE_STARTING", created)  # the daemon took it from the queue and launches it
    started = seen.get("PIPELINE_START", dequeued)
    ended = seen.get("PIPELINE_SUCCESS", started)
    slowest = max(steps, default=(0.0, "-"))
    return ended - created, (
        f"{prefix}{record.dagster_run.job_name}: {ended - created:.2f} s = queue {dequeued - created:.2f} s, "
        f"launch to process up {started - dequeued:.2f} s, run {ended - started:.2f} s "
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
    parser.add_argument("--launcher", choices=("both", "warm", "default"), default="both")
    parser.add_argument("--immediate", action="store_true", help="no run queue: DefaultRunCoordinator")
    args = parser.parse_args()
    launchers = ("default", "warm") if args.launcher == "both" else (args.launcher,)
    folder = Path(tempfile.mkdtemp(prefix="bench-dagster-ui-"))
    os.environ["SYNC_HOME"] = str(folder / "sync_home")
    try:
        engine = measure_engine(folder, args.changes, args.repeat)
        cli = measure_cli_path(folder, args.changes, args.repeat)
        measured = {
            launcher: measure_dagster_dev(folder, args.changes, args.repeat, launcher, args.immediate)
            for launcher in launchers
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    rows = [
        ("engine run_sync (in a warm process)", engine),
        ("CLI path: materialize_sync, both jobs in process (warm)", cli),
    ]
    for launcher, figures in measured.items():
        rows += [
            (f"{launcher} launcher: UI launchRun sync (one run), to SUCCESS", figures.one),
            (f"{launcher} launcher: UI launchRun sync_detect + sync_apply", figures.two),
            (f"{launcher} launcher: sensors' sync_detect + sync_apply runs", figures.sensor),
        ]
    print(f"small sync of {args.changes} changes, median of {args.repeat} (seconds); load average {load_average()}")
    for name, values in rows:
        print(f"  {name:<64} {statistics.median(values):6.2f}   runs: {', '.join(f'{v:.2f}' for v in values)}")
    for launcher, figures in measured.items():
        beyond = statistics.median(figures.one) - statistics.median(engine)
        print(f"  {launcher} launcher: UI (sync, one run) minus engine: {beyond:.2f} s")
        print(f"  {launcher} launcher: the first UI launch after `dagster dev` started: {figures.first:.2f} s")
    print("where the time went (last attempt):")
    for launcher, figures in measured.items():
        for line in figures.breakdown:
            print(f"  {launcher}: {line}")


def load_average() -> str:
    return ", ".join(f"{value:.2f}" for value in os.getloadavg())


if __name__ == "__main__":
    main()
