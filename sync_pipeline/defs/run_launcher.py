"""A run launcher whose run processes start warm: forked from a forkserver that imported Dagster and GX once.

Dagster's `DefaultRunLauncher` asks the code server to start each run in a fresh "spawn" process, which
imports Dagster, the code location and, at the first check, Great Expectations: seconds per run before a
step of a small sync does anything (docs/benchmarks.md, "A small sync from the UI"). `WarmRunLauncher`
keeps one `multiprocessing` forkserver per launching process (the webserver for direct launches, the
daemon for queued runs and sensors) that has imported the heavy third-party modules (`PRELOAD`) but not
`sync_pipeline`: each run is a process forked from it, which imports the code location fresh (an edit or
the UI's Reload counts in the next run) and runs the run as `dagster api execute_run` does.

What the default launcher gives stays: one process per run; Terminate interrupts the run's process
(SIGINT, as the code server does); a process that dies before its run finished fails the run with the
reason (watched by the launching process; after a restart of that process, by run monitoring through
`check_run_worker_health`); the forkserver exits with the process that started it once its runs ended.
One machine only: the run processes are children of the forkserver on the launching host.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Self

import dagster as dg
from dagster._config.config_schema import UserConfigSchema
from dagster._core.events import EngineEventData
from dagster._core.instance.ref import InstanceRef
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._serdes import ConfigurableClass, ConfigurableClassData
from dagster._utils import get_run_crash_explanation
from dagster._utils.error import serializable_error_info_from_exc_info

# Imported once by the forkserver, so no run process pays for them. Never `sync_pipeline`: each run imports
# the code location itself. A module that is not installed is skipped (multiprocessing ignores ImportError).
PRELOAD: tuple[str, ...] = (
    "dagster",
    "dagster._cli.api",  # `dagster api execute_run`'s body, which runs the run
    "dagster._core.execution.api",
    "dagster._core.storage.sqlite_storage",
    "great_expectations",
    "great_expectations.expectations",
    "great_expectations.data_context",
    "pandas",
    "sqlalchemy",
    "psycopg",
    "MySQLdb",
    "alembic",
    "pydantic",
    "jinja2",
    # multiprocessing runs the launching process's main script again in every child (as `__mp_main__`):
    # these are what the scripts of `dagster-webserver`, `dagster-daemon` and `dagster dev` import.
    "dagster_webserver.cli",
    "dagster._daemon.cli",
    "dagster._cli",
)
# The run's process, recorded on the run so that any process of the instance finds it (the webserver
# terminates a run the daemon launched; run monitoring checks it after the launching process restarted).
WORKER_TAG = "sync/run_worker"


def _run_worker(run_id: str, instance_ref: InstanceRef) -> None:
    """The forked run process: the run, exactly as `dagster api execute_run` executes it."""
    from dagster._cli.api import _execute_run_command_body
    from dagster._utils.interrupts import capture_interrupts

    with capture_interrupts(), dg.DagsterInstance.from_ref(instance_ref) as instance:
        try:
            _execute_run_command_body(run_id, instance, lambda _event: None, set_exit_code_on_failure=False)
        except Exception:
            # Before the run started: the code location did not import, the run was not found... The run's
            # log shows why, and the run fails now instead of waiting for the crash watcher.
            run = instance.get_run_by_id(run_id)
            if run is not None and not run.is_finished:
                error = serializable_error_info_from_exc_info(sys.exc_info())
                instance.report_engine_event(
                    f"The run's process could not start the run: {error.message.strip()}",
                    run,
                    EngineEventData.engine_error(error),
                )
                instance.report_run_failed(run)
            raise


def _start_ticks(pid: int) -> int | None:
    """When the process started, in clock ticks since boot (Linux), so a reused pid is not mistaken for it;
    None without /proc (another system) or when the process is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return None if fields[0] == "Z" else int(fields[19])  # fields[0] is field 3 of stat(5), the state
    except (OSError, IndexError, ValueError):
        return None


def _worker_record(pid: int) -> str:
    return json.dumps({"host": socket.gethostname(), "pid": pid, "start": _start_ticks(pid)})


def _alive_worker_pid(run: dg.DagsterRun) -> int | None:
    """The pid of the run's process if it is alive on this host and is still that process, else None."""
    recorded = run.tags.get(WORKER_TAG)
    if not recorded:
        return None
    worker = json.loads(recorded)
    if worker.get("host") != socket.gethostname():
        return None
    pid = int(worker["pid"])
    if worker.get("start") is not None:  # recorded from /proc: the same process only if it started then
        return pid if _start_ticks(pid) == worker["start"] else None
    try:  # no /proc: whether a process of that pid exists
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


class WarmRunLauncher(RunLauncher, ConfigurableClass):
    """Launches each run in its own process, forked from a forkserver that has the heavy imports done.

    dagster.yaml:  run_launcher: {module: sync_pipeline.defs.run_launcher, class: WarmRunLauncher}
    Config (optional): `preload`, more modules for the forkserver to import. The forkserver starts at
    the first launch (the launcher itself is created then), so the first run after a start waits for it.
    """

    def __init__(self, inst_data: ConfigurableClassData | None = None, preload: Sequence[str] = ()) -> None:
        self._inst_data = inst_data
        self._context = multiprocessing.get_context("forkserver")
        # One forkserver per process: the list is the process's (every WarmRunLauncher sets the same).
        self._context.set_forkserver_preload([*PRELOAD, *preload])
        self._lock = threading.Lock()
        self._processes: dict[str, multiprocessing.process.BaseProcess] = {}
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> UserConfigSchema:
        return {"preload": dg.Field([str], is_required=False, default_value=[])}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> Self:
        return cls(inst_data=inst_data, preload=config_value.get("preload", []))

    @staticmethod
    def _start_forkserver() -> None:
        """Start the forkserver if it is not running; it imports PRELOAD once, and a launch waits for that."""
        # GX reads this when it is imported, in the forkserver: no usage statistics (the network may be closed).
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
        from multiprocessing import forkserver

        forkserver.ensure_running()

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        if run.job_code_origin is None:
            raise dg.DagsterInvariantViolationError(f"Run {run.run_id} has no code origin: it cannot be launched.")
        self._start_forkserver()
        process = self._context.Process(
            target=_run_worker, args=(run.run_id, self._instance.get_ref()), name=f"dagster-run-{run.run_id}"
        )
        process.start()
        pid = process.pid
        assert pid is not None
        with self._lock:
            self._processes[run.run_id] = process
        self._instance.add_run_tags(run.run_id, {WORKER_TAG: _worker_record(pid)})
        self._instance.report_engine_event(
            f"Run process {pid} forked from the warm forkserver.", run, EngineEventData.in_process(pid), cls=type(self)
        )
        threading.Thread(target=self._watch, args=(run.run_id, process), name=f"watch-{pid}", daemon=True).start()

    def _watch(self, run_id: str, process: multiprocessing.process.BaseProcess) -> None:
        """Wait for the run's process; if it ended before its run did, the run fails with the reason."""
        process.join()
        with self._lock:
            self._processes.pop(run_id, None)
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return
        if run.status == dg.DagsterRunStatus.CANCELING:  # interrupted before the run could report it
            self._instance.report_run_canceled(run, f"Run process {process.pid} ended on termination.")
            return
        message = get_run_crash_explanation(f"Run process {process.pid} of run {run_id}", process.exitcode or 0)
        self._instance.report_engine_event(message, run, cls=type(self))
        self._instance.report_run_failed(run, message)

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            return False
        self._instance.report_run_canceling(run)
        pid = _alive_worker_pid(run)
        if pid is None:
            self._instance.report_engine_event(
                "The run's process is not running on this machine: nothing to interrupt.", run, cls=type(self)
            )
            return False
        os.kill(pid, signal.SIGINT)  # the run stops at its next step boundary or interruptible point
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        recorded = run.tags.get(WORKER_TAG)
        if not recorded:
            # Launched by another launcher (before this one was configured): nothing here to judge it by.
            return CheckRunHealthResult(WorkerStatus.RUNNING, "no run process recorded by WarmRunLauncher")
        if json.loads(recorded).get("host") != socket.gethostname():
            return CheckRunHealthResult(WorkerStatus.RUNNING, "the run's process is on another host")
        if _alive_worker_pid(run) is not None:
            return CheckRunHealthResult(WorkerStatus.RUNNING)
        fresh = self._instance.get_run_by_id(run.run_id)
        if fresh is not None and fresh.is_finished:
            return CheckRunHealthResult(WorkerStatus.SUCCESS)
        return CheckRunHealthResult(WorkerStatus.FAILED, f"the run's process ({recorded}) is gone")

    def join(self, timeout: int = 30) -> None:
        with self._lock:
            processes = list(self._processes.values())
        for process in processes:
            process.join(timeout)
