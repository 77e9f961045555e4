"""Run keys shared by every launcher of a run (the sensors and `sync-pipeline sync`), so that one replica
file gets one detect run and one decision version gets one load, whoever starts it.

- Detect: runs carry `sync/detect_key = detect:<replica id>`. `replica_sensor` launches none while a
  run with that key is queued, running or succeeded; after a failed one, the next attempt gets a new
  run key (`#<attempt>`), so a failure can be retried by dropping the file again.
- Apply: runs carry `sync/apply_key = <session id>:<decision version>`. Before creating a load run,
  a launcher claims `<key>#<attempt>` on the master (`sync_session.apply_claim`) with one conditional
  UPDATE: of a sensor tick and a CLI sync racing for the same load, exactly one wins; the other
  launches nothing. A new decision (a new version) or a failed attempt makes a new key.
  The `sync` job (detect and load in one run) claims the same way from inside its run, right before
  its load (`may_load_in_run`), and then carries the key like any load run.
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg
from sqlalchemy.engine import Engine

from sync_pipeline.engine import records

# Tags every run of a session carries, whoever launched it (sensor, UI, CLI), so that a session is
# looked up in the run history and no launcher repeats another's run.
SESSION_TAG = "sync/session"
APPLY_KEY_TAG = "sync/apply_key"
DETECT_KEY_TAG = "sync/detect_key"
# Set by `resolutions` on the run: `waiting` when manual decisions are pending, else `ready`.
STATE_TAG = "sync/state"
# The job that detects and loads in one run (defs/jobs.py); named here, where its load is claimed.
SYNC_JOB_NAME = "sync"

SENSOR_NAME_TAG = "dagster/sensor_name"  # set by the sensor daemon on the runs it launches
_ENDED_WITHOUT_SUCCESS = frozenset({dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED})


def apply_key(session_id: str, decision_version: int) -> str:
    return f"{session_id}:{decision_version}"


def detect_key(replica_id: str) -> str:
    return f"detect:{replica_id}"


def attempt_run_key(key: str, attempt: int) -> str:
    """The run key of an attempt: the key itself first, `key#n` after n failed attempts."""
    return key if attempt == 0 else f"{key}#{attempt}"


@dataclass(frozen=True)
class RunsUnderKey:
    """The runs in the instance that carry one detect or apply key."""

    active_run_id: str | None  # a queued, running or successful run: nothing new to launch
    attempts: int  # every run under the key so far (the failed ones, when none is active)


def runs_under_key(instance: dg.DagsterInstance, tag: str, key: str, sensor_runs_only: bool = False) -> RunsUnderKey:
    """`sensor_runs_only`: count as active only runs a sensor launched. An in-process run of the CLI that
    was killed stays STARTED in the instance forever, and must not block the next `sync`."""
    records = instance.get_run_records(dg.RunsFilter(tags={tag: key}))
    active = [
        r.dagster_run.run_id
        for r in records
        if r.dagster_run.status not in _ENDED_WITHOUT_SUCCESS
        and (not sensor_runs_only or SENSOR_NAME_TAG in r.dagster_run.tags)
    ]
    return RunsUnderKey(active[0] if active else None, len(records))


def claim_apply(engine: Engine, session_id: str, decision_version: int, attempt: int) -> bool:
    """True for the one launcher that may create the load run of this version and attempt."""
    token = f"{apply_key(session_id, decision_version)}#{attempt}"
    return records.claim_apply(engine, session_id, decision_version, token)


def claim_cli_apply(engine: Engine, instance: dg.DagsterInstance, session_id: str, decision_version: int) -> str | None:
    """For `sync-pipeline sync`: the apply key to run the load under, or None when another launcher has
    the load of this version (a run queued, running or done, or a sensor tick that claimed it)."""
    key = apply_key(session_id, decision_version)
    runs = runs_under_key(instance, APPLY_KEY_TAG, key, sensor_runs_only=True)
    if runs.active_run_id is not None:
        return None
    return key if claim_apply(engine, session_id, decision_version, runs.attempts) else None


def may_load_in_run(context: dg.AssetExecutionContext, engine: Engine, session_id: str, status: str) -> bool:
    """Whether master_load loads in this run. Always in `sync_apply` (its gate ran before). In the `sync`
    job, where the load follows detection in the same run: not while manual decisions are pending (the
    run ends waiting, as a detect run does; approval_sensor launches `sync_apply` once they are decided),
    and for a session ready to load only with the apply claim of its decision version, which the run
    then carries as its apply key, so that neither approval_sensor nor `sync-pipeline sync` starts a
    second load of it."""
    if context.job_name != SYNC_JOB_NAME:
        return True
    if status == records.SessionStatus.WAITING:
        context.log.info(f"session {session_id}: manual decisions pending; the load waits for them (sync_apply)")
        context.instance.add_run_tags(context.run.run_id, {STATE_TAG: str(records.SessionStatus.WAITING)})
        return False
    if status not in (records.SessionStatus.READY, records.SessionStatus.LOADING):
        return True  # done (nothing to load) or a state the load step reports itself
    version = records.decision_version(engine, session_id)
    key = claim_cli_apply(engine, context.instance, session_id, version)
    if key is None:
        context.log.info(f"session {session_id}: another launcher has the load of decision version {version}")
        return False
    context.instance.add_run_tags(context.run.run_id, {SESSION_TAG: session_id, APPLY_KEY_TAG: key})
    return True
