"""`sync-pipeline sync` through the Dagster asset graph, in-process, against the persistent instance.

The CLI's sync runs the job the UI launches, `sync` (detect, policies and, when nothing waits for a
person, the load, in one run), so a sync from the command line appears in the UI's run history as one
run, like one launched there. With decisions pending the run ends waiting; the next `sync`, or
approval_sensor's `sync_apply` once they are decided, loads the session.
The instance is `$DAGSTER_HOME` when set, else `$SYNC_HOME/dagster_home` (created with a dagster.yaml
on first use): start `dagster dev` with DAGSTER_HOME pointing there to see the CLI's runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
from sqlalchemy.engine import Engine

from sync_pipeline.definitions import build_definitions
from sync_pipeline.defs.failures import error_of
from sync_pipeline.defs.instance_config import write_instance_config
from sync_pipeline.defs.partitions import ensure_partition
from sync_pipeline.defs.run_keys import APPLY_KEY_TAG, DETECT_KEY_TAG, SYNC_JOB_NAME, detect_key
from sync_pipeline.defs.run_tags import LOAD_STAGE, stage_tags
from sync_pipeline.engine.collector import collector_paused
from sync_pipeline.engine.errors import SyncError
from sync_pipeline.engine.master import connect_master, sync_home
from sync_pipeline.engine.records import SessionStatus, latest_session
from sync_pipeline.engine.run_driver import LOAD_LEFT_CONFLICTS, WAITING, RunDriver, holding, open_run
from sync_pipeline.engine.session_state import SyncResult, counts_of, pending_of


def default_dagster_home() -> Path:
    """Where runs are recorded when DAGSTER_HOME is not set: $SYNC_HOME/dagster_home."""
    return sync_home() / "dagster_home"


def dagster_home_in_use() -> Path:
    """The instance folder `sync` records its runs in: $DAGSTER_HOME, else $SYNC_HOME/dagster_home."""
    configured = os.environ.get("DAGSTER_HOME")
    return Path(configured).expanduser() if configured else default_dagster_home()


@contextmanager
def sync_instance() -> Iterator[dg.DagsterInstance]:
    """The persistent Dagster instance: $DAGSTER_HOME, else $SYNC_HOME/dagster_home."""
    if os.environ.get("DAGSTER_HOME"):
        Path(os.environ["DAGSTER_HOME"]).expanduser().mkdir(parents=True, exist_ok=True)
        write_instance_config(Path(os.environ["DAGSTER_HOME"]).expanduser())
        instance = dg.DagsterInstance.get()
    else:
        home = default_dagster_home()
        home.mkdir(parents=True, exist_ok=True)
        write_instance_config(home)
        instance = dg.DagsterInstance.from_config(str(home))
    try:
        yield instance
    finally:
        instance.dispose()


def _step_failures(result: dg.ExecuteInProcessResult) -> list[tuple[str, SyncError | None]]:
    """Per failed step: what failed, in words, and the engine error it failed with, rebuilt with its type
    and fix from the failure's metadata (see defs/failures.py); None for any other error."""
    found: list[tuple[str, SyncError | None]] = []
    for event in result.all_events:
        if not event.is_step_failure or event.step_failure_data is None:
            continue
        data = event.step_failure_data
        user = data.user_failure_data
        error = error_of(user.description, user.metadata or {}) if user is not None else None
        if error is not None:
            found.append((f"{event.step_key}: {error}", error))
            continue
        chain, info = [], data.error
        while info is not None:
            chain.append(info)
            info = info.cause
        # Dagster wraps the step's own exception; the first error that is not Dagster's is the step's.
        own = next((e for e in chain if not (e.cls_name or "").startswith("Dagster")), chain[0] if chain else None)
        if own is None:
            found.append((f"{event.step_key} failed", None))
        else:
            message = own.message.strip().splitlines()[0] if own.message.strip() else ""
            found.append((f"{event.step_key}: {own.cls_name or 'Error'}: {message.split(': ', 1)[-1]}", None))
    return found


def _failure_message(result: dg.ExecuteInProcessResult) -> str:
    failed_checks = [  # a WARN (pending decisions, a reconciliation after the commit) does not fail a run
        e for e in result.get_asset_check_evaluations() if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR
    ]
    if failed_checks:
        return "; ".join(
            f"blocking check {e.asset_key.to_user_string()}:{e.check_name} failed"
            + (f": {e.description}" if e.description else "")
            for e in failed_checks
        )
    failures = _step_failures(result)
    if failures:
        return "; ".join(message for message, _error in failures)
    return f"run {result.run_id} failed"


def _warnings(result: dg.ExecuteInProcessResult) -> list[str]:
    """Checks that warned in a successful run (e.g. master_reconciles after the commit)."""
    return [
        f"{e.check_name}: {e.description}"
        for e in result.get_asset_check_evaluations()
        if not e.passed and e.severity == dg.AssetCheckSeverity.WARN
    ]


@contextmanager
def _master_url_in_environment(master_url: str | None) -> Iterator[None]:
    """Hand the master URL to the runs through SYNC_MASTER_URL, which the `master` resource reads when a
    step starts. Set as resource config it would be stored, password and all, in the instance's job
    snapshots."""
    if not master_url:
        yield
        return
    before = os.environ.get("SYNC_MASTER_URL")
    os.environ["SYNC_MASTER_URL"] = master_url
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("SYNC_MASTER_URL", None)
        else:
            os.environ["SYNC_MASTER_URL"] = before


def _run_job(
    job_name: str,
    master_url: str | None,
    instance: dg.DagsterInstance,
    replica_id: str,
    run_config: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> dg.ExecuteInProcessResult:
    job = build_definitions().resolve_job_def(job_name)
    # The run's events all go to the instance (the UI shows them). The terminal hears of a failure from
    # the CLI, as the message and the fix, not as Dagster's log lines with their stack traces.
    quiet = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
    with _master_url_in_environment(master_url):
        return job.execute_in_process(
            instance=instance,
            partition_key=replica_id,
            run_config={**quiet, **(run_config or {})},
            tags=tags or {},
            raise_on_error=False,
        )


def _failed(result: dg.ExecuteInProcessResult, engine: Engine, driver: RunDriver) -> SyncResult:
    """What a failed run means for the sync, which is what the session on the master says.

    A run can fail after the load committed (the protocol could not be written, a check after the load
    raised): the sync is done then, and is reported done, with the later failure as a note. Before that,
    an engine error a step raised is raised here with its type and fix, as `run_sync` raises it (bad input:
    exit code 2, nothing written); any other failure reports the session failed.
    """
    session = latest_session(engine, driver.replica_id)
    if session is not None and session["status"] == SessionStatus.DONE:
        driver.retire_file()  # the run may have ended before it retired the file (done once at most)
        return driver.done(session["session_id"], [f"after the load committed: {_failure_message(result)}"])
    for _message, error in _step_failures(result):
        if error is not None:
            raise error
    session_id = session["session_id"] if session else None
    return SyncResult(
        session_id,
        driver.replica_id,
        SessionStatus.FAILED,
        counts_of(engine, session_id) if session_id else {},
        pending_of(engine, session_id) if session_id else {},
        _failure_message(result),
    )


def materialize_sync(
    master_url: str | None, replica_path: str, instance: dg.DagsterInstance | None = None
) -> SyncResult:
    """Run (or continue) a replica's session through the asset graph: one run of the job `sync`, which
    loads when nothing is pending. Returns what `run_sync` returns (status done, waiting or failed).

    The replica is opened and verified once, here, before any run starts (`run_driver.open_run`): bad
    input raises `BadInputError` with nothing written, neither to the master nor to the Dagster instance,
    and the runs' steps use the driver held for them instead of opening the file again.
    """
    engine = connect_master(master_url)
    try:
        with open_run(engine, replica_path) as driver:
            if driver.finished is not None:  # loaded before an interruption: opening retired the file
                return driver.finished
            # The whole run with the cyclic collector paused, as `RunDriver.run` pauses it for `run_sync`:
            # Dagster's event writes between the steps would otherwise trigger full collections that walk
            # everything the run keeps alive (the detected changes shared by its steps) and all the
            # modules imported; the steps pause it themselves too, for runs launched elsewhere.
            with holding(driver), _instance_or(instance) as dagster, collector_paused():
                return _run_sync_job(master_url, engine, dagster, driver)
    finally:
        engine.dispose()


def _run_sync_job(master_url: str | None, engine: Engine, dagster: dg.DagsterInstance, driver: RunDriver) -> SyncResult:
    """One run of the job `sync`, as the UI's launch: detect, decide by policy and, when nothing waits for
    a person, load under the apply claim of the session's decision version (`run_keys.may_load_in_run`)."""
    replica_id = driver.replica_id
    resolved_path = str(driver.replica.path.resolve())
    partition = ensure_partition(engine, dagster, replica_id)
    run = _run_job(
        SYNC_JOB_NAME,
        master_url,
        dagster,
        partition,
        {"ops": {"local_changes": {"config": {"replica_path": resolved_path}}}},
        # The run may load: it carries the load's limit tags (deploy/dagster.yaml) and the detect key that
        # keeps replica_sensor from launching a detect run of the same file beside it.
        {"sync/replica_file": resolved_path, DETECT_KEY_TAG: detect_key(replica_id), **stage_tags(engine, LOAD_STAGE)},
    )
    if not run.success:
        return _failed(run, engine, driver)
    session = latest_session(engine, replica_id)
    assert session is not None, "the sync run succeeded without a session"
    session_id = session["session_id"]
    # The run tags itself with the apply key when its load step claimed the load (may_load_in_run).
    claimed = APPLY_KEY_TAG in _run_tags(dagster, run.run_id)
    if session["status"] in (SessionStatus.READY, SessionStatus.LOADING) and not claimed:
        message = "approval_sensor launched the load of this decision version: see its run in Dagster"
        return SyncResult(session_id, replica_id, SessionStatus.WAITING, counts_of(engine, session_id), {}, message)
    # Waiting after a load that ran: rows the master changed meanwhile went back to detection.
    return _outcome(engine, driver, session_id, LOAD_LEFT_CONFLICTS if claimed else WAITING, _warnings(run))


def _run_tags(dagster: dg.DagsterInstance, run_id: str) -> dict[str, str]:
    found = dagster.get_run_by_id(run_id)
    return dict(found.tags) if found is not None else {}


def _outcome(engine: Engine, driver: RunDriver, session_id: str, waiting: str, warnings: list[str]) -> SyncResult:
    """The result of runs that succeeded, from the session's state on the master."""
    session = latest_session(engine, driver.replica_id)
    assert session is not None
    if session["status"] == SessionStatus.DONE:
        return driver.done(session_id, warnings)
    if session["status"] == SessionStatus.FAILED:
        pending = pending_of(engine, session_id)
        return SyncResult(
            session_id,
            driver.replica_id,
            SessionStatus.FAILED,
            counts_of(engine, session_id),
            pending,
            session["error"] or "failed",
        )
    return driver.waiting(session_id, waiting)


@contextmanager
def _instance_or(instance: dg.DagsterInstance | None) -> Iterator[dg.DagsterInstance]:
    if instance is not None:
        yield instance
        return
    with sync_instance() as created:
        yield created
