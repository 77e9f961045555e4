"""Sensors that drive sessions without a person at the Dagster UI.

- `approval_sensor` polls the master's sync tables: every session that is `ready` (nothing pending)
  gets one `sync_apply` run per decision version (run_key `session:version`), so a decision never
  launches twice and a decision changed before the load launches once more. Replicas checked out
  from the master become partitions on the way, so the UI can launch a sync for each.
- `replica_sensor` watches the inbox folder: a replica file of this master becomes a partition and
  a `sync_detect` run. Junk, retired and foreign files are skipped with the reason in the tick.

Both remember what they launched in their cursor and never raise on bad input: a tick that cannot
reach the master skips with the reason instead of failing again and again.
"""

import json
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa
from sqlalchemy.exc import SQLAlchemyError

from sync_pipeline.defs.jobs import sync_apply_job, sync_detect_job
from sync_pipeline.defs.partitions import REPLICAS_PARTITION_NAME, replicas_partitions
from sync_pipeline.defs.resources import MasterDatabase, SyncInbox, SyncSettingsResource
from sync_pipeline.engine import store
from sync_pipeline.engine.errors import SyncError
from sync_pipeline.engine.replica import open_replica

# Tags every run that loads a session carries, whoever launched it (sensor, UI, CLI), so that a
# session is looked up in the run history and approval_sensor does not launch a load the CLI ran.
SESSION_TAG = "sync/session"
APPLY_KEY_TAG = "sync/apply_key"
SENSOR_INTERVAL_SECONDS = 30


def apply_key(session_id: str, decision_version: int) -> str:
    return f"{session_id}:{decision_version}"


def _load_cursor(cursor: str | None) -> dict[str, Any]:
    try:
        data = json.loads(cursor or "{}")
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _new_partitions(context: dg.SensorEvaluationContext, replica_ids: list[str]) -> list[str]:
    known = set(context.instance.get_dynamic_partitions(REPLICAS_PARTITION_NAME))
    return [r for r in dict.fromkeys(replica_ids) if r not in known]


def _add_partitions(new_partitions: list[str]) -> list[dg.AddDynamicPartitionsRequest]:
    return [replicas_partitions.build_add_request(new_partitions)] if new_partitions else []


@dg.sensor(
    job=sync_apply_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    description="Launches the load + protocol run (sync_apply) of every session with no pending conflict; "
    "run_key = session id + decision version. Also makes every replica checked out from the master a "
    "partition, so that a sync can be launched for it from the UI.",
)
def approval_sensor(context: dg.SensorEvaluationContext, master: MasterDatabase) -> dg.SensorResult:
    launched = _load_cursor(context.cursor)
    try:
        with master.engine() as engine, engine.connect() as conn:
            ready = conn.execute(
                sa.select(
                    store.sync_session.c.session_id,
                    store.sync_session.c.replica_id,
                    store.sync_session.c.decision_version,
                )
                .where(store.sync_session.c.status == "ready")
                .order_by(store.sync_session.c.started_at)
            ).all()
            # Replicas still out (not retired): the partitions a person may launch a sync for.
            out = (
                conn.execute(
                    sa.select(store.sync_replica.c.replica_id)
                    .where(store.sync_replica.c.status != "retired")
                    .order_by(store.sync_replica.c.checked_out_at)
                )
                .scalars()
                .all()
            )
    except (SyncError, SQLAlchemyError) as exc:
        return dg.SensorResult(
            skip_reason=f"the master is not reachable or not initialised: {exc}", cursor=context.cursor
        )
    requests: list[dg.RunRequest] = []
    # Only sessions still ready stay in the cursor: versions only grow, so a forgotten session can
    # never come back with a key it had.
    cursor: dict[str, int] = {}
    for session_id, replica_id, version in ready:
        cursor[session_id] = version
        key = apply_key(session_id, version)
        if launched.get(session_id) == version:
            continue
        if context.instance.get_run_records(dg.RunsFilter(tags={APPLY_KEY_TAG: key}), limit=1):
            context.log.info(f"session {session_id}: a load for decision version {version} ran already")
            continue
        requests.append(
            dg.RunRequest(
                run_key=key,
                partition_key=replica_id,
                tags={SESSION_TAG: session_id, APPLY_KEY_TAG: key},
            )
        )
    new_partitions = _new_partitions(context, [*out, *[r.partition_key for r in requests if r.partition_key]])
    if not requests:
        return dg.SensorResult(
            skip_reason=f"{len(ready)} session(s) ready, none with a new decision version",
            dynamic_partitions_requests=_add_partitions(new_partitions),
            cursor=json.dumps(cursor, sort_keys=True),
        )
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=_add_partitions(new_partitions),
        cursor=json.dumps(cursor, sort_keys=True),
    )


def _signature(file: Path) -> str:
    stat = file.stat()
    return f"{stat.st_mtime_ns}:{stat.st_size}"


@dg.sensor(
    job=sync_detect_job,
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=SENSOR_INTERVAL_SECONDS,
    description="Registers replica files (*.db) dropped into the inbox as partitions and launches sync_detect "
    "for each; junk, retired or foreign files are skipped with the reason.",
)
def replica_sensor(
    context: dg.SensorEvaluationContext,
    master: MasterDatabase,
    inbox: SyncInbox,
    sync_settings: SyncSettingsResource,
) -> dg.SensorResult:
    previous: dict[str, str] = _load_cursor(context.cursor).get("seen", {})
    seen: dict[str, str] = {}
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
            for file in sorted(folder.glob("*.db")):
                try:
                    signature = _signature(file)
                except OSError:
                    continue  # gone between listing and stat
                seen[file.name] = signature
                if previous.get(file.name) == signature:
                    continue
                try:
                    replica = open_replica(engine, file)
                except SyncError as exc:
                    skipped.append(f"{file.name}: {exc.problem}")
                    continue
                except Exception as exc:  # noqa: BLE001 - a strange file must not stop the other files
                    skipped.append(f"{file.name}: {type(exc).__name__}: {exc}")
                    continue
                replica_id = replica.manifest.replica_id
                replica.close()
                requests.append(
                    dg.RunRequest(
                        run_key=f"inbox:{replica_id}:{file.name}:{signature}",
                        partition_key=replica_id,
                        run_config={"ops": {"local_changes": {"config": {"replica_path": str(file.resolve())}}}},
                        tags={"sync/replica_file": str(file.resolve())},
                    )
                )
    except (SyncError, SQLAlchemyError) as exc:
        return dg.SensorResult(
            skip_reason=f"the master is not reachable or not initialised: {exc}", cursor=context.cursor
        )
    for reason in skipped:
        context.log.info(f"skipped {reason}")
    cursor = json.dumps({"seen": seen}, sort_keys=True)
    if not requests:
        reason = "; ".join(skipped) if skipped else f"no new replica file in {folder}"
        return dg.SensorResult(skip_reason=f"skipped {reason}" if skipped else reason, cursor=cursor)
    new_partitions = _new_partitions(context, [r.partition_key for r in requests if r.partition_key])
    return dg.SensorResult(
        run_requests=requests, dynamic_partitions_requests=_add_partitions(new_partitions), cursor=cursor
    )


sync_sensors = [approval_sensor, replica_sensor]
