"""The `sync` job: detect and load in one run (one process start, one Great Expectations import), for
launches from the UI and the inbox. Run for real against a Dagster instance and a real master (SQLite
and PostgreSQL): a session nothing waits for is loaded in that run; with manual decisions pending the
run ends waiting and the master's data is untouched; a load another launcher claimed is not repeated.
"""

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from sync_pipeline.definitions import build_definitions
from sync_pipeline.defs import step_session as step_session_module
from sync_pipeline.defs.assets import latest_session, master_load, resolutions, sync_protocol
from sync_pipeline.defs.jobs import APPLY_JOB_NAME
from sync_pipeline.defs.partitions import ensure_partition
from sync_pipeline.defs.resources import MasterDatabase
from sync_pipeline.defs.run_keys import APPLY_KEY_TAG, SESSION_TAG, STATE_TAG, SYNC_JOB_NAME, apply_key, claim_apply
from sync_pipeline.defs.sensors import approval_sensor
from sync_pipeline.demo import demo_metadata
from sync_pipeline.engine.errors import ReplicaError
from sync_pipeline.engine.replica import open_replica
from sync_pipeline.engine.session import decide_module, open_session_of
from sync_pipeline.engine.session_state import SessionContext, session_context
from sync_pipeline_tests.test_dagster_assets import (
    AUTOMATIC_SETTINGS,
    Demo,
    build_demo,
    business_rows,
    latest_metadata,
    materialized_partitions,
)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def run_sync_job(demo: Demo, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """What the UI's launch of `sync` does for the partition (the replica file from the launch's config)."""
    partition = ensure_partition(demo.engine, instance, demo.replica_id)
    return (
        build_definitions(demo.master_url)
        .resolve_job_def(SYNC_JOB_NAME)
        .execute_in_process(
            instance=instance,
            partition_key=partition,
            run_config={"ops": {"local_changes": {"config": {"replica_path": str(demo.replica)}}}},
            raise_on_error=False,
        )
    )


def phones(demo: Demo) -> dict[int, str]:
    contact = demo_metadata().tables["contact"]
    with demo.engine.connect() as conn:
        return dict(conn.execute(sa.select(contact.c.id, contact.c.phone).where(contact.c.id.in_([1, 2]))).all())


def test_one_run_loads_a_session_nothing_waits_for(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)

    run = run_sync_job(demo, instance)

    assert run.success
    [record] = instance.get_runs()
    assert record.job_name == SYNC_JOB_NAME
    session_id = latest_metadata(instance, resolutions, demo.partition)["session_id"]
    # local_wins on crm: the field worker's phone numbers are in the master now, loaded by this one run.
    assert phones(demo) == {1: "+49 170 1111111", 2: "+49 170 2222222"}
    assert open_session_of(demo.engine, demo.replica_id) is None
    with pytest.raises(ReplicaError, match="retired"):
        open_replica(demo.engine, demo.replica)
    for asset in (master_load, sync_protocol):
        assert demo.partition in materialized_partitions(instance, asset), asset.key
    # The run carries the apply key it claimed, as a load run launched by a sensor or the CLI does.
    tags = instance.get_run_by_id(run.run_id).tags
    assert tags[SESSION_TAG] == session_id and tags[APPLY_KEY_TAG] == apply_key(session_id, 1)
    assert tags[STATE_TAG] == "done"
    evaluations = {e.check_name: e for e in run.get_asset_check_evaluations()}
    assert evaluations["master_reconciles"].passed and evaluations["local_changes_match_schema"].passed


def test_pending_decisions_end_the_run_waiting_then_approval_sensor_loads(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas")
    before = business_rows(demo.engine)

    run = run_sync_job(demo, instance)

    assert run.success, "waiting for a person is the normal end of the run, not a failure"
    assert business_rows(demo.engine) == before, "nothing may be loaded while decisions are pending"
    assert demo.partition not in materialized_partitions(instance, master_load)
    assert demo.partition not in materialized_partitions(instance, sync_protocol)
    assert instance.get_run_by_id(run.run_id).tags[STATE_TAG] == "waiting"
    assert APPLY_KEY_TAG not in instance.get_run_by_id(run.run_id).tags
    warned = [e for e in run.get_asset_check_evaluations() if not e.passed]
    assert [(e.check_name, e.severity) for e in warned] == [("no_manual_decisions_pending", dg.AssetCheckSeverity.WARN)]

    # After the decisions, approval_sensor launches the load (sync_apply) as after a detect run.
    session_id = latest_metadata(instance, resolutions, demo.partition)["session_id"]
    decide_module(demo.engine, session_id, "crm", "master", "Tess Tester")
    context = dg.build_sensor_context(instance=instance, resources={"master": MasterDatabase(url=master_url)})
    result = approval_sensor(context)
    assert isinstance(result, dg.SensorResult)
    [request] = result.run_requests
    applied = (
        build_definitions(master_url)
        .resolve_job_def(APPLY_JOB_NAME)
        .execute_in_process(instance=instance, partition_key=request.partition_key, tags=request.tags)
    )
    assert applied.success
    assert phones(demo) == {1: "+49 30 9999999", 2: "+49 170 2222222"}
    assert (latest_session(demo.engine, demo.replica_id) or {}).get("status") == "done"


def test_a_load_another_launcher_claimed_is_not_repeated(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)
    # A first run stops after the policies (the load's claim taken as a sensor tick would take it) ...
    partition = ensure_partition(demo.engine, instance, demo.replica_id)
    detect = (
        build_definitions(master_url)
        .resolve_job_def("sync_detect")
        .execute_in_process(
            instance=instance,
            partition_key=partition,
            run_config={"ops": {"local_changes": {"config": {"replica_path": str(demo.replica)}}}},
        )
    )
    assert detect.success
    session = open_session_of(demo.engine, demo.replica_id)
    assert session is not None and session["status"] == "ready"
    assert claim_apply(demo.engine, session["session_id"], session["decision_version"], 0)
    before = business_rows(demo.engine)

    # ... then `sync` launched for the same replica continues the session but leaves the load to its claimant.
    run = run_sync_job(demo, instance)

    assert run.success
    assert business_rows(demo.engine) == before
    assert demo.partition not in materialized_partitions(instance, master_load)
    assert APPLY_KEY_TAG not in instance.get_run_by_id(run.run_id).tags
    assert open_session_of(demo.engine, demo.replica_id)["status"] == "ready"


def test_the_steps_of_a_run_share_the_session_context(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every step and check of `sync` needs the session's context: local_changes hands the one it built
    (settings, reflected tables, detected changes) to the later steps of the run, instead of each step
    parsing the settings and reflecting the tables again; every check still reports its result."""
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)
    rebuilt: list[str] = []

    def rebuilding(engine: sa.Engine, session_id: str) -> SessionContext:
        rebuilt.append(session_id)
        return session_context(engine, session_id)

    monkeypatch.setattr(step_session_module, "session_context", rebuilding)

    run = run_sync_job(demo, instance)

    assert run.success and phones(demo) == {1: "+49 170 1111111", 2: "+49 170 2222222"}
    assert rebuilt == [], "the later steps took the context local_changes built"
    evaluations = {e.check_name: e.passed for e in run.get_asset_check_evaluations()}
    assert evaluations == {
        "local_changes_match_schema": True,
        "local_changes_meet_settings_expectations": True,
        "decided_values_match_schema": True,
        "no_manual_decisions_pending": True,
        "master_reconciles": True,
    }

    # A run of another process (the load launched later, as approval_sensor does) builds its own.
    rebuilt.clear()
    session_id = latest_metadata(instance, resolutions, demo.partition)["session_id"]
    again = build_definitions(master_url).resolve_job_def(APPLY_JOB_NAME)
    assert again.execute_in_process(instance=instance, partition_key=demo.partition).success
    assert rebuilt == [session_id], "built once for the run, then shared by its steps"
