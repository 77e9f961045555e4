"""What `sync` reports through Dagster equals the session's state on the master, and refusals cross the
Dagster boundary with their type and fix: a step failing after the load committed never turns a loaded
sync into "failed"; the reconciliation after the commit warns instead of failing; a replica refused
inside a run prints its message and fix, nothing else, exit 2."""

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from sync_pipeline.cli import main
from sync_pipeline.dagster_run import materialize_sync
from sync_pipeline.definitions import build_definitions
from sync_pipeline.defs.assets import master_load
from sync_pipeline.defs.failures import ERROR_TYPE, FIX, error_of
from sync_pipeline.defs.jobs import APPLY_JOB_NAME, DETECT_JOB_NAME
from sync_pipeline.defs.partitions import REPLICAS_PARTITION_NAME
from sync_pipeline.defs.run_keys import SYNC_JOB_NAME
from sync_pipeline.demo import demo_metadata
from sync_pipeline.engine import store
from sync_pipeline.engine.errors import ReplicaError
from sync_pipeline.engine.replica import open_replica
from sync_pipeline_tests.helpers import TABLES, make_master, make_replica, master_state, replica_engine
from sync_pipeline_tests.test_dagster_assets import AUTOMATIC_SETTINGS, build_demo, check_evaluations

UNKNOWN_COLUMN_PROBLEM = "table 'parent', key [90]: the change log names column(s) is_admin that table 'parent'"
UNKNOWN_COLUMN_FIX = "the replica was edited or comes from another schema; check out a new replica"


def session_status(engine: sa.Engine) -> str:
    with engine.connect() as conn:
        return conn.execute(sa.select(store.sync_session.c.status)).scalar_one()


def sync_through_cli(master_url: str, replica: Path) -> tuple[int, dict[str, object]]:
    result = CliRunner().invoke(main, ["sync", "--master", master_url, "--replica", str(replica), "--json"])
    return result.exit_code, json.loads(result.stdout)


def test_a_step_failing_after_the_commit_reports_the_sync_done(master_url: str, tmp_path: Path) -> None:
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)
    # The protocol folder cannot be created: sync_protocol, the step after the load, fails.
    blocked = Path(os.environ["SYNC_HOME"]) / "protocols"
    blocked.parent.mkdir(parents=True, exist_ok=True)
    blocked.write_text("a file where the protocol folder should be")

    code, report = sync_through_cli(master_url, demo.replica)

    assert session_status(demo.engine) == "done"
    assert (code, report["status"]) == (0, "done"), report
    assert "after the load committed" in str(report["message"]) and "sync_protocol" in str(report["message"])
    with pytest.raises(ReplicaError, match="retired"):
        open_replica(demo.engine, demo.replica)
    contact = demo_metadata().tables["contact"]
    with demo.engine.connect() as conn:
        assert conn.execute(sa.select(contact.c.phone).where(contact.c.id == 1)).scalar_one() == "+49 170 1111111"


def add_trigger_rewriting_phones(engine: sa.Engine) -> None:
    """A master trigger that rewrites a column the sync writes (as a normalising or audit trigger does)."""
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            conn.exec_driver_sql(
                "CREATE TRIGGER phone_rewrite AFTER UPDATE OF phone ON contact WHEN NEW.phone NOT LIKE '% (checked)' "
                "BEGIN UPDATE contact SET phone = NEW.phone || ' (checked)' WHERE id = NEW.id; END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION phone_rewrite() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "NEW.phone := NEW.phone || ' (checked)'; RETURN NEW; END $$"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER phone_rewrite BEFORE UPDATE OF phone ON contact "
                "FOR EACH ROW EXECUTE FUNCTION phone_rewrite()"
            )


def test_a_master_trigger_rewriting_written_values_never_makes_a_loaded_sync_failed(
    master_url: str, tmp_path: Path
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)
    add_trigger_rewriting_phones(demo.engine)

    code, report = sync_through_cli(master_url, demo.replica)

    # Whatever the load makes of the trigger, the CLI says what the master holds.
    status = session_status(demo.engine)
    assert report["status"] == status, report
    assert code == {"done": 0, "failed": 1}[status], report
    if status == "done":
        contact = demo_metadata().tables["contact"]
        with demo.engine.connect() as conn:
            phone = conn.execute(sa.select(contact.c.phone).where(contact.c.id == 1)).scalar_one()
        assert phone == "+49 170 1111111 (checked)"


def test_master_reconciles_warns_about_a_difference_after_the_commit(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)
    assert materialize_sync(master_url, str(demo.replica), instance).status == "done"
    [apply_run] = instance.get_runs(dg.RunsFilter(job_name=SYNC_JOB_NAME))
    first = check_evaluations(instance, apply_run.run_id)["master_reconciles"]
    assert first.passed and "after the commit the master still holds what was written" in first.description
    contact = demo_metadata().tables["contact"]
    with demo.engine.begin() as conn:  # another writer, after the commit
        conn.execute(sa.update(contact).where(contact.c.id == 1).values(phone="+1 555 0100"))

    # The load again, as approval_sensor or the UI might launch it: master_load finds the session loaded,
    # the reconciliation compares once more.
    os.environ["SYNC_MASTER_URL"] = master_url
    try:
        again = (
            build_definitions()
            .resolve_job_def(APPLY_JOB_NAME)
            .execute_in_process(instance=instance, partition_key=demo.partition, raise_on_error=False)
        )
    finally:
        os.environ.pop("SYNC_MASTER_URL")

    assert again.success
    [evaluation] = [e for e in again.get_asset_check_evaluations() if e.check_name == "master_reconciles"]
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert "since then the master differs" in evaluation.description
    failing = evaluation.metadata["failing_rows"].value
    assert [(row["table"], row["column"], row["actual"]) for row in failing] == [
        ("contact", "phone", json.dumps("+1 555 0100"))
    ]
    assert session_status(demo.engine) == "done"


def test_master_reconciles_reports_what_the_load_verified(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    """master_load records the load's own verification (the engine's summary `verified`, when it has one);
    the check shows it, and says so when there is none."""
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)
    assert materialize_sync(master_url, str(demo.replica), instance).status == "done"
    [apply_run] = instance.get_runs(dg.RunsFilter(job_name=SYNC_JOB_NAME))
    evaluation = check_evaluations(instance, apply_run.run_id)["master_reconciles"]
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=master_load.key, asset_partitions=[demo.partition]), limit=1
    ).records
    recorded = {k: v.value for k, v in records[0].asset_materialization.metadata.items()}
    if "verified" in recorded:
        assert evaluation.metadata["verified"].value == recorded["verified"]
        assert f"the load verified {recorded['verified']['rows']} row(s)" in evaluation.description
    else:
        assert "master_load recorded no verification of its own" in evaluation.description
    assert not evaluation.blocking


def replica_with_an_unknown_column(engine: sa.Engine, folder: Path) -> Path:
    """A replica whose change log names a column the table lacks: found only while extracting, inside
    the detect run (opening the replica succeeds)."""
    replica = make_replica(engine, folder)
    with replica_engine(replica).begin() as conn:
        conn.execute(sa.update(TABLES["parent"]).where(TABLES["parent"].c.id == 1).values(city="edited"))
    log = sqlite3.connect(replica)
    log.execute(
        "INSERT INTO _sync_log (table_name, op, row_key, old_values, new_values, changed_at) VALUES "
        "('parent', 'I', '[90]', NULL, '{\"id\": 90, \"name\": \"x\", \"is_admin\": 1}', '2026-01-01T00:00:00.000')"
    )
    log.commit()
    log.close()
    return replica


def test_a_refusal_inside_a_run_prints_the_message_and_fix_only(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url)
    replica = replica_with_an_unknown_column(engine, tmp_path)
    before = master_state(engine)
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "SYNC_FAULT")}

    finished = subprocess.run(
        [sys.executable, "-m", "sync_pipeline.cli", "sync", "--master", master_url, "--replica", str(replica)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )

    assert finished.returncode == 2, finished.stderr
    assert finished.stdout == ""
    # Progress lines start with "…"; everything else is the refusal: its message and its fix.
    said = [line for line in finished.stderr.splitlines() if not line.startswith("… ")]
    assert said == [f"error: {UNKNOWN_COLUMN_PROBLEM} does not have", f"  fix: {UNKNOWN_COLUMN_FIX}"]
    assert master_state(engine) == before


def test_an_engine_error_keeps_its_type_and_fix_across_the_dagster_boundary(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    engine = make_master(master_url)
    replica = replica_with_an_unknown_column(engine, tmp_path)

    with pytest.raises(ReplicaError) as refused:
        materialize_sync(master_url, str(replica), instance)

    assert type(refused.value) is ReplicaError
    assert refused.value.problem == f"{UNKNOWN_COLUMN_PROBLEM} does not have"
    assert refused.value.fix == UNKNOWN_COLUMN_FIX
    # As the UI launches it: the failure event carries the error's type and fix as metadata.
    replica_id = open_replica(engine, replica).manifest.replica_id
    if not instance.has_dynamic_partition(REPLICAS_PARTITION_NAME, replica_id):
        instance.add_dynamic_partitions(REPLICAS_PARTITION_NAME, [replica_id])
    os.environ["SYNC_MASTER_URL"] = master_url
    try:
        run = (
            build_definitions()
            .resolve_job_def(DETECT_JOB_NAME)
            .execute_in_process(
                instance=instance,
                partition_key=replica_id,
                run_config={"ops": {"local_changes": {"config": {"replica_path": str(replica)}}}},
                raise_on_error=False,
            )
        )
    finally:
        os.environ.pop("SYNC_MASTER_URL")
    assert not run.success
    [failure] = [e.step_failure_data.user_failure_data for e in run.all_events if e.is_step_failure]
    assert failure.description == f"{UNKNOWN_COLUMN_PROBLEM} does not have"
    metadata = {key: value.value for key, value in failure.metadata.items()}
    assert metadata[ERROR_TYPE] == "sync_pipeline.engine.errors.ReplicaError"
    assert metadata[FIX] == UNKNOWN_COLUMN_FIX
    rebuilt = error_of(failure.description, failure.metadata)
    assert type(rebuilt) is ReplicaError and str(rebuilt) == str(refused.value)


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def test_sync_jobs_run_in_process_and_leave_the_pdf_out() -> None:
    """One process per run, not one per step (each would import Great Expectations again); the PDF is an
    asset of its own, outside the sync's jobs."""
    definitions = build_definitions()
    for name in (DETECT_JOB_NAME, APPLY_JOB_NAME):
        job = definitions.resolve_job_def(name)
        assert job.executor_def is dg.in_process_executor, name
        assert dg.AssetKey("sync_protocol_pdf") not in job.asset_layer.asset_graph.get_all_asset_keys()
    assert definitions.resolve_implicit_global_asset_job_def().executor_def is dg.in_process_executor


def test_great_expectations_is_set_up_once_per_process() -> None:
    from sync_pipeline.defs import gx_adapter

    suite = gx_adapter.FrameSuite(
        "rows:contact",
        ["_change_id", "name"],
        [{"_change_id": 0, "name": "Ada"}],
        [gx_adapter.ExpectationSpec("expect_column_values_to_not_be_null", {"column": "name"})],
        ["_change_id"],
    )
    assert gx_adapter.validate([suite]).passed
    loaded = gx_adapter._great_expectations()
    suites = dict(loaded.suites)

    second = gx_adapter.validate([suite, suite])

    assert second.passed and second.evaluated == 2
    assert gx_adapter._great_expectations() is loaded
    assert loaded.suites == suites  # the same suite is not built again
