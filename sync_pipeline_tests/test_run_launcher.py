"""The warm run launcher (`defs/run_launcher.py`) as the UI uses it: runs launched through the webserver's
GraphQL `launchRun` on an instance configured by the dagster.yaml the product writes, against a real code
server and real masters. A run is a process forked from the forkserver and loads the master; a failing
run shows its error; Terminate interrupts a run; a run whose process died does not stay STARTED, neither
for the launching process nor, after that process is gone, for the daemon's run monitoring."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml
from dagster._core.test_utils import create_run_for_test
from dagster._core.workspace.context import WorkspaceProcessContext, WorkspaceRequestContext
from dagster._core.workspace.load_target import ModuleTarget
from dagster._daemon.monitoring.run_monitoring import monitor_started_run
from dagster_graphql.test.utils import execute_dagster_graphql

from sync_pipeline.defs.instance_config import write_instance_config
from sync_pipeline.defs.partitions import REPLICAS_PARTITION_NAME
from sync_pipeline.defs.run_launcher import WORKER_TAG, WarmRunLauncher
from sync_pipeline.demo import demo_metadata
from sync_pipeline.engine import store
from sync_pipeline_tests.conftest import fresh_master_url
from sync_pipeline_tests.test_dagster_assets import AUTOMATIC_SETTINGS, Demo, build_demo

REPO = Path(__file__).resolve().parent.parent
LOCATION = "sync_pipeline.definitions"
LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""
TERMINATE = "mutation Stop($id: String!) { terminateRun(runId: $id) { __typename } }"
FINISHED = (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkspaceProcessContext]:
    """An instance with the product's dagster.yaml, and the code location served by a real code server.
    The run coordinator launches at once (in `dagster dev` the daemon dequeues and calls the same launcher)."""
    home = tmp_path_factory.mktemp("dagster_home")
    write_instance_config(home)
    config = yaml.safe_load((home / "dagster.yaml").read_text())
    config["run_coordinator"] = {"module": "dagster._core.run_coordinator", "class": "DefaultRunCoordinator"}
    (home / "dagster.yaml").write_text(yaml.safe_dump(config))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert isinstance(instance.run_launcher, WarmRunLauncher)
        target = ModuleTarget(module_name=LOCATION, attribute=None, working_directory=str(REPO), location_name=LOCATION)
        with WorkspaceProcessContext(instance, target) as context:
            yield context


def launch(workspace: WorkspaceProcessContext, demo: Demo, partition: str, replica_path: Path | None = None) -> str:
    """Launch the job `sync` for the demo's partition as the UI's Launch button does; its run id."""
    workspace.instance.add_dynamic_partitions(REPLICAS_PARTITION_NAME, [partition])
    params = {
        "selector": {"repositoryLocationName": LOCATION, "repositoryName": "__repository__", "jobName": "sync"},
        "runConfigData": {
            "ops": {"local_changes": {"config": {"replica_path": str(replica_path or demo.replica)}}},
            "resources": {"master": {"config": {"url": demo.master_url}}},
        },
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
    }
    answer = graphql(workspace.create_request_context(), LAUNCH, {"params": params})["launchRun"]
    assert answer["__typename"] == "LaunchRunSuccess", answer
    return str(answer["run"]["runId"])


def graphql(context: WorkspaceRequestContext, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    result = execute_dagster_graphql(context, query, variables)
    assert not result.errors, result.errors
    return dict(result.data)


def wait_until(instance: dg.DagsterInstance, run_id: str, done: Any) -> dg.DagsterRun:
    deadline = time.monotonic() + 300  # a limit for a hung run, not a timing assertion
    while time.monotonic() < deadline:
        run = instance.get_run_by_id(run_id)
        assert run is not None
        if done(run):
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} is still {run.status}")


def finished(instance: dg.DagsterInstance, run_id: str) -> dg.DagsterRun:
    return wait_until(instance, run_id, lambda run: run.status in FINISHED)


def step_started(instance: dg.DagsterInstance, run_id: str, step: str) -> dg.DagsterRun:
    def started(run: dg.DagsterRun) -> bool:
        events = instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_START)
        return any(event.step_key == step for event in events) or run.status in FINISHED

    return wait_until(instance, run_id, started)


def edited_demo(master_url: str, folder: Path) -> tuple[Demo, dict[int, str]]:
    """The demo without its usual edits, and three phone numbers changed in the replica."""
    demo = build_demo(master_url, folder, AUTOMATIC_SETTINGS, edits=False)
    contact = demo_metadata().tables["contact"]
    phones = {number: f"+49 170 {number:07d}" for number in (1, 2, 3)}
    local = sa.create_engine(f"sqlite:///{demo.replica}")
    with local.begin() as conn:
        for number, phone in phones.items():
            conn.execute(sa.update(contact).where(contact.c.id == number).values(phone=phone))
    local.dispose()
    return demo, phones


def master_phones(demo: Demo) -> dict[int, str]:
    contact = demo_metadata().tables["contact"]
    with demo.engine.connect() as conn:
        return dict(conn.execute(sa.select(contact.c.id, contact.c.phone).where(contact.c.id.in_([1, 2, 3]))).all())


def messages(instance: dg.DagsterInstance, run_id: str) -> str:
    return "\n".join(entry.message or "" for entry in instance.all_logs(run_id))


def worker_pid(run: dg.DagsterRun) -> int:
    return int(json.loads(run.tags[WORKER_TAG])["pid"])


def test_a_sync_launched_from_the_ui_runs_in_a_forked_process_and_loads_the_master(
    workspace: WorkspaceProcessContext, tmp_path: Path
) -> None:
    instance = workspace.instance
    with fresh_master_url("sqlite", tmp_path) as master_url:
        demo, phones = edited_demo(master_url, tmp_path / "replicas")
        assert master_phones(demo) != phones

        run = finished(instance, launch(workspace, demo, demo.partition))

        assert run.status == dg.DagsterRunStatus.SUCCESS, messages(instance, run.run_id)
        assert master_phones(demo) == phones
        with demo.engine.connect() as conn:
            assert conn.execute(sa.select(store.sync_session.c.status)).scalar_one() == "done"
        pid = worker_pid(run)
        assert pid != os.getpid()
        assert f"Run process {pid} forked from the warm forkserver." in messages(instance, run.run_id)
        assert f"Started process for run (pid: {pid})." in messages(instance, run.run_id)


def test_a_failing_run_is_a_failure_with_the_readable_error(workspace: WorkspaceProcessContext, tmp_path: Path) -> None:
    instance = workspace.instance
    with fresh_master_url("sqlite", tmp_path) as master_url:
        demo, _phones = edited_demo(master_url, tmp_path / "replicas")
        before = master_phones(demo)

        run = finished(instance, launch(workspace, demo, demo.partition, replica_path=tmp_path / "missing.db"))

        assert run.status == dg.DagsterRunStatus.FAILURE
        [failure] = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_FAILURE)
        error = failure.dagster_event.step_failure_data.error
        assert failure.step_key == "local_changes"
        assert "missing.db" in error.message and "Traceback" not in error.message
        assert master_phones(demo) == before


@pytest.fixture
def locked_master(tmp_path: Path) -> Iterator[tuple[Demo, str]]:
    """A PostgreSQL master whose replica table a transaction holds locked: a run's first step waits for it.
    Yields the demo and its partition key (read before the lock)."""
    with fresh_master_url("postgresql", tmp_path) as master_url:
        demo, _phones = edited_demo(master_url, tmp_path / "replicas")
        partition = demo.partition
        with demo.engine.connect() as conn:
            conn.execute(sa.text("SET lock_timeout = 0"))
            conn.execute(sa.text("LOCK TABLE sync_replica IN ACCESS EXCLUSIVE MODE"))
            yield demo, partition
            conn.rollback()
        demo.engine.dispose()


def test_terminate_interrupts_the_run_process(
    workspace: WorkspaceProcessContext, locked_master: tuple[Demo, str]
) -> None:
    instance = workspace.instance
    run_id = launch(workspace, *locked_master)
    run = step_started(instance, run_id, "local_changes")
    assert run.status == dg.DagsterRunStatus.STARTED
    pid = worker_pid(run)

    answer = graphql(workspace.create_request_context(), TERMINATE, {"id": run_id})["terminateRun"]

    assert answer["__typename"] == "TerminateRunSuccess"
    assert finished(instance, run_id).status == dg.DagsterRunStatus.CANCELED
    wait_for_exit(pid)


def test_a_run_whose_process_is_killed_fails_with_the_reason(
    workspace: WorkspaceProcessContext, locked_master: tuple[Demo, str]
) -> None:
    instance = workspace.instance
    run_id = launch(workspace, *locked_master)
    pid = worker_pid(step_started(instance, run_id, "local_changes"))

    os.kill(pid, signal.SIGKILL)  # as the kernel's OOM killer would

    run = finished(instance, run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE
    assert f"Run process {pid} of run {run_id} was terminated by signal 9 (SIGKILL)" in messages(instance, run_id)


def test_run_monitoring_fails_a_started_run_whose_process_is_gone(workspace: WorkspaceProcessContext) -> None:
    """After the launching process restarted, nobody waits for the run's process: the daemon asks the launcher."""
    instance = workspace.instance
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    killed = subprocess.Popen(["sleep", "600"])
    killed_record = worker_record(killed.pid)
    killed.kill()  # not waited for: a zombie with the same pid and start time until it is reaped
    wait_for_exit(killed.pid)
    runs = {
        name: create_run_for_test(instance, status=dg.DagsterRunStatus.STARTED, tags={WORKER_TAG: record})
        for name, record in (
            ("gone", worker_record(gone.pid)),
            ("zombie", killed_record),
            ("alive", worker_record(os.getpid())),
        )
    }
    logger = logging.getLogger("run_monitoring")

    with workspace.create_request_context() as context:
        for run in runs.values():
            monitor_started_run(instance, context, instance.get_run_record_by_id(run.run_id), logger)
    killed.wait()

    status = {name: instance.get_run_by_id(run.run_id).status for name, run in runs.items()}
    assert status == {
        "gone": dg.DagsterRunStatus.FAILURE,
        "zombie": dg.DagsterRunStatus.FAILURE,
        "alive": dg.DagsterRunStatus.STARTED,
    }
    assert "is gone" in messages(instance, runs["gone"].run_id)


def worker_record(pid: int) -> str:
    from sync_pipeline.defs.run_launcher import _worker_record

    return _worker_record(pid)


def wait_for_exit(pid: int) -> None:
    """Until the process has exited (gone, or a zombie nobody reaped yet)."""
    deadline = time.monotonic() + 300  # a limit for a hung process (or a slow preload), not a timing assertion
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return
        if state == "Z":
            return
        time.sleep(0.2)
    raise AssertionError(f"process {pid} is still running")


def test_the_written_dagster_yaml_loads_with_the_warm_launcher(tmp_path: Path) -> None:
    assert write_instance_config(tmp_path)
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert isinstance(instance.run_launcher, WarmRunLauncher)
        assert instance.run_coordinator.dequeue_interval_seconds == 1  # type: ignore[attr-defined]
        assert instance.run_monitoring_enabled and instance.run_monitoring_max_resume_run_attempts == 0


def test_the_forkserver_leaves_with_the_process_that_started_it(tmp_path: Path) -> None:
    script = (
        "import multiprocessing.forkserver as f\n"
        "from sync_pipeline.defs.run_launcher import WarmRunLauncher\n"
        "WarmRunLauncher()._start_forkserver()\n"
        "print(f._forkserver._forkserver_pid, flush=True)\n"
    )
    started = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, cwd=REPO)
    wait_for_exit(int(started.stdout.strip()))
