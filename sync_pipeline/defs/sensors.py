"""Sensors that drive sessions without a person at the Dagster UI.

- `approval_sensor` polls the master's sync tables: every session that is `ready` (nothing pending)
  gets one `sync_apply` run per decision version (run_key `session:version`), claimed on the master so
  that it never runs beside the CLI's load of the same version (defs/run_keys.py). It also keeps the
  partition set equal to the replicas that are out: named partitions for new ones, retired ones removed.
- `replica_sensor` takes replica files from the inbox into a private spool (defs/inbox.py), then a file
  of this master becomes a `sync_detect` run, one per replica (run_key `detect:<replica id>`). Links,
  foreign, junk, retired and foreign-master files are refused with the reason.

Both remember what they did in their cursor and never raise on bad input: a tick that cannot reach
the master skips with the reason instead of failing again and again.
"""

import json
import os
from pathlib import Path
from typing import Any

import dagster as dg
from sqlalchemy.engine import Engine
from sqlalchemy.exc import SQLAlchemyError

from sync_pipeline.defs.inbox import InboxError, Refusal, reject, spooled_files, take_new_files
from sync_pipeline.defs.jobs import sync_apply_job, sync_detect_job
from sync_pipeline.defs.partitions import (
    REPLICAS_PARTITION_NAME,
    partition_key_of,
    replica_partitions,
    replicas_partitions,
)
from sync_pipeline.defs.resources import MasterDatabase, SyncInbox, SyncSettingsResource
from sync_pipeline.defs.run_keys import (
    APPLY_KEY_TAG,
    DETECT_KEY_TAG,
    SESSION_TAG,
    apply_key,
    attempt_run_key,
    claim_apply,
    detect_key,
    runs_under_key,
)
from sync_pipeline.defs.run_tags import DETECT_STAGE, LOAD_STAGE, stage_tags
from sync_pipeline.engine import records
from sync_pipeline.engine.errors import SyncError
from sync_pipeline.engine.replica import open_replica

__all__ = ["APPLY_KEY_TAG", "SESSION_TAG", "apply_key", "approval_sensor", "replica_sensor", "sync_sensors"]

# Shorter in tests and busy deployments (SYNC_SENSOR_INTERVAL_SECONDS); read when the code location loads.
SENSOR_INTERVAL_SECONDS = int(os.environ.get("SYNC_SENSOR_INTERVAL_SECONDS", "30"))


def _load_cursor(cursor: str | None) -> dict[str, Any]:
    try:
        data = json.loads(cursor or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


_IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def _run_in_progress(instance: dg.DagsterInstance, tag: str, value: str) -> bool:
    runs = dg.RunsFilter(tags={tag: value}, statuses=_IN_PROGRESS)
    return bool(instance.get_run_records(runs, limit=1))


def _partition_requests(
    context: dg.SensorEvaluationContext, out: list[str], stale: set[str]
) -> list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest]:
    """Add the partitions of replicas that are out; delete those of retired replicas (their runs, sessions
    and protocols stay readable). Keys this master does not know are left alone."""
    known = set(context.instance.get_dynamic_partitions(REPLICAS_PARTITION_NAME))
    new = [key for key in dict.fromkeys(out) if key not in known]
    # A load that retired its replica may still be writing the protocol under that partition: wait for it.
    leaving = (known & stale) - set(out)
    gone = sorted(key for key in leaving if not _run_in_progress(context.instance, "dagster/partition", key))
    requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = []
    if new:
        requests.append(replicas_partitions.build_add_request(new))
    if gone:
        requests.append(replicas_partitions.build_delete_request(gone))
    return requests


def _load_requests(
    context: dg.SensorEvaluationContext, engine: Engine, ready: list[Any], launched: dict[str, Any]
) -> list[dg.RunRequest]:
    requests: list[dg.RunRequest] = []
    for session_id, replica_id, version in ready:
        key = apply_key(session_id, version)
        if launched.get(session_id) == version:
            continue
        if _run_in_progress(context.instance, SESSION_TAG, session_id):
            # Its load re-detected rows another load changed and goes on under the next decision version
            # in the same run: a second run of it would find the session loaded and do nothing.
            context.log.info(f"session {session_id}: its load run is still going")
            continue
        if runs_under_key(context.instance, APPLY_KEY_TAG, key).attempts:
            context.log.info(f"session {session_id}: a load for decision version {version} ran already")
            continue
        if not claim_apply(engine, session_id, version, 0):
            context.log.info(f"session {session_id}: `sync-pipeline sync` is loading decision version {version}")
            continue
        requests.append(
            dg.RunRequest(
                run_key=key,
                partition_key=partition_key_of(engine, replica_id),
                tags={SESSION_TAG: session_id, APPLY_KEY_TAG: key, **stage_tags(engine, LOAD_STAGE)},
            )
        )
    return requests


@dg.sensor(
    job=sync_apply_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    description="Launches the load + protocol run (sync_apply) of every session with no pending conflict; "
    "run_key = session id + decision version. Keeps the partitions equal to the replicas checked out "
    "(owner-shortid keys), so that a sync can be launched for each from the UI; retired ones leave.",
)
def approval_sensor(context: dg.SensorEvaluationContext, master: MasterDatabase) -> dg.SensorResult:
    launched = _load_cursor(context.cursor)
    try:
        with master.engine() as engine:
            ready = records.ready_sessions(engine)
            out, stale = replica_partitions(engine)
            requests = _load_requests(context, engine, list(ready), launched)
    except (SyncError, SQLAlchemyError) as exc:
        return dg.SensorResult(
            skip_reason=f"the master is not reachable or not initialised: {exc}", cursor=context.cursor
        )
    # Only sessions still ready stay in the cursor: versions only grow, so a forgotten session can
    # never come back with a key it had.
    cursor = json.dumps({session_id: version for session_id, _, version in ready}, sort_keys=True)
    partitions = _partition_requests(context, out, stale)
    if not requests:
        return dg.SensorResult(
            skip_reason=f"{len(ready)} session(s) ready, none with a new decision version",
            dynamic_partitions_requests=partitions,
            cursor=cursor,
        )
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=partitions, cursor=cursor)


def _inbox_name(spooled: Path) -> str:
    """The name the file had in the inbox (the spool prefixes 8 hex digits and a dash)."""
    return spooled.name[9:] if len(spooled.name) > 9 and spooled.name[8] == "-" else spooled.name


def _detect_request(
    context: dg.SensorEvaluationContext, engine: Engine, file: Path, skipped: list[str]
) -> dg.RunRequest | None:
    """The detect run of one spooled file; None (with the reason in `skipped`) when there is none to make."""
    try:
        replica = open_replica(engine, file)
    except SyncError as exc:
        reason = exc.problem
    except Exception as exc:  # noqa: BLE001 - a strange file must not stop the other files
        reason = f"{type(exc).__name__}: {exc}"
    else:
        replica_id = replica.manifest.replica_id
        replica.close()
        key = detect_key(replica_id)
        runs = runs_under_key(context.instance, DETECT_KEY_TAG, key)
        partition = partition_key_of(engine, replica_id)
        if runs.active_run_id is not None:
            skipped.append(
                f"{_inbox_name(file)}: replica {partition} has its sync_detect run already ({runs.active_run_id})"
            )
            return None
        return dg.RunRequest(
            run_key=attempt_run_key(key, runs.attempts),
            partition_key=partition,
            run_config={"ops": {"local_changes": {"config": {"replica_path": str(file)}}}},
            tags={
                "sync/replica_file": str(file),
                "sync/inbox_file": _inbox_name(file),
                DETECT_KEY_TAG: key,
                **stage_tags(engine, DETECT_STAGE),
            },
        )
    moved = reject(file, file.parent.parent, reason)
    skipped.append(f"{_inbox_name(file)}: {reason} (moved to {moved.parent.name}/{moved.name})")
    return None


def _report(refusals: list[Refusal], skipped: list[str]) -> dict[str, str]:
    """Adds the refusals not reported before to `skipped`; the refusals to remember, name -> signature."""
    skipped[:0] = [f"{r.name}: {r.reason} (left in the inbox)" for r in refusals if r.reason]
    return {r.name: r.signature for r in refusals}


@dg.sensor(
    job=sync_detect_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    description="Takes replica files (*.db) dropped into the inbox into its private spool and launches one "
    "sync_detect per replica; links, other users' files, junk, retired or foreign files are refused with the "
    "reason.",
)
def replica_sensor(
    context: dg.SensorEvaluationContext,
    master: MasterDatabase,
    inbox: SyncInbox,
    sync_settings: SyncSettingsResource,
) -> dg.SensorResult:
    previous = _load_cursor(context.cursor)
    handled: set[str] = set(previous.get("handled", []))
    requests: list[dg.RunRequest] = []
    skipped: list[str] = []
    try:
        with master.engine() as engine:
            try:
                settings = sync_settings.load(engine)
            except SyncError as exc:
                context.log.warning(f"settings unavailable, using the default inbox: {exc}")
                settings = None
            folder = inbox.folder(settings)
            if not folder.is_dir():
                return dg.SensorResult(
                    skip_reason=f"the inbox {folder} does not exist (create it, or set "
                    "SYNC_INBOX or the settings' `inbox`)",
                    cursor=context.cursor,
                )
            records.require_initialised(engine)  # an uninitialised master: skip before taking any file
            try:
                _, refusals = take_new_files(folder, previous.get("refused", {}))
            except (InboxError, OSError) as exc:
                return dg.SensorResult(skip_reason=f"the inbox {folder} cannot be used: {exc}", cursor=context.cursor)
            refused = _report(refusals, skipped)
            spooled = spooled_files(folder)
            for file in spooled:
                if file.name in handled:
                    continue
                request = _detect_request(context, engine, file, skipped)
                if request is not None:
                    requests.append(request)
    except (SyncError, SQLAlchemyError) as exc:
        return dg.SensorResult(
            skip_reason=f"the master is not reachable or not initialised: {exc}", cursor=context.cursor
        )
    for reason in skipped:
        context.log.warning(f"refused {reason}")
    still_spooled = {f.name for f in spooled_files(folder)}
    cursor = json.dumps({"handled": sorted(still_spooled), "refused": refused}, sort_keys=True)
    if not requests:
        reason = "; ".join(skipped) if skipped else f"no new replica file in {folder}"
        return dg.SensorResult(skip_reason=f"refused {reason}" if skipped else reason, cursor=cursor)
    out = [r.partition_key for r in requests if r.partition_key]
    known = set(context.instance.get_dynamic_partitions(REPLICAS_PARTITION_NAME))
    new = [key for key in dict.fromkeys(out) if key not in known]
    adds = [replicas_partitions.build_add_request(new)] if new else []
    return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=adds, cursor=cursor)


sync_sensors = [approval_sensor, replica_sensor]
