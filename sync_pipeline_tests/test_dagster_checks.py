"""Blocking Great Expectations checks: a failing gate stops the chain before the master is touched,
and its result carries GX's statistics and the rows that failed."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from sync_pipeline.dagster_run import materialize_sync
from sync_pipeline.definitions import build_definitions
from sync_pipeline.defs.assets import conflicts, local_changes, master_load
from sync_pipeline.defs.check_suites import decided_conflicts, local_change_suites, schema_expectations
from sync_pipeline.defs.gx_adapter import ExpectationSpec, FrameSuite, validate
from sync_pipeline.defs.jobs import APPLY_JOB_NAME
from sync_pipeline.demo import DEMO_SETTINGS, demo_metadata
from sync_pipeline.engine import store
from sync_pipeline.engine.queries import list_conflicts
from sync_pipeline.engine.run_driver import open_run
from sync_pipeline.engine.schema import TableInfo
from sync_pipeline.engine.session import decide, decide_module, session_context
from sync_pipeline_tests.test_dagster_assets import (
    AUTOMATIC_SETTINGS,
    build_demo,
    business_rows,
    check_evaluations,
    materialized_partitions,
    whole_master,
)

# The demo's field worker orders 5 and 6 pieces on new order lines: more than this allows.
AT_MOST_FOUR_PIECES = AUTOMATIC_SETTINGS.replace(
    "      order_line:\n        policy: local_wins",
    "      order_line:\n        policy: local_wins\n        expectations:\n"
    "          - expect_column_values_to_be_between: {column: quantity, max_value: 4}",
)
# Phone numbers must be international; a person's edited value breaks that.
INTERNATIONAL_PHONES = DEMO_SETTINGS.replace(
    "        natural_key: [email]",
    "        natural_key: [email]\n        expectations:\n"
    "          - expect_column_values_to_match_regex: {column: phone, regex: '^[+]'}",
)


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def test_failing_settings_expectation_blocks_the_chain_and_leaves_the_master_unchanged(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    assert "max_value: 4" in AT_MOST_FOUR_PIECES
    demo = build_demo(master_url, tmp_path / "replicas", AT_MOST_FOUR_PIECES)
    before = business_rows(demo.engine)

    result = materialize_sync(master_url, str(demo.replica), instance)

    assert result.status == "failed"
    assert "local_changes_meet_settings_expectations" in result.message
    assert business_rows(demo.engine) == before
    assert demo.partition in materialized_partitions(instance, local_changes)
    for later in (conflicts, master_load):
        assert demo.partition not in materialized_partitions(instance, later), later.key
    [run] = instance.get_runs()
    evaluation = check_evaluations(instance, run.run_id)["local_changes_meet_settings_expectations"]
    assert not evaluation.passed and evaluation.blocking
    metadata = {key: value.value for key, value in evaluation.metadata.items()}
    assert metadata["unsuccessful_expectations"] == 1
    assert metadata["evaluated_expectations"] == metadata["successful_expectations"] + 1
    assert metadata["success_percent"] == pytest.approx(
        100 * metadata["successful_expectations"] / metadata["evaluated_expectations"], abs=0.01
    )
    failing = metadata["failing_rows"]
    assert sorted(row["quantity"] for row in failing) == [5, 6]
    assert {row["suite"] for row in failing} == {"rows:order_line"}
    assert all("order_id" in row and "line_no" in row for row in failing)
    assert check_evaluations(instance, run.run_id)["local_changes_match_schema"].passed
    # The session cannot go on: it ends as failed on the master, with the reason.
    with demo.engine.connect() as conn:
        status, error = conn.execute(sa.select(store.sync_session.c.status, store.sync_session.c.error)).one()
    assert status == "failed" and "local_changes_meet_settings_expectations" in error


def test_edited_value_breaking_an_expectation_blocks_the_load(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas", INTERNATIONAL_PHONES)
    waiting = materialize_sync(master_url, str(demo.replica), instance)
    assert waiting.status == "waiting" and waiting.session_id is not None
    [phone_conflict] = [
        c
        for c in list_conflicts(demo.engine, waiting.session_id)
        if c["kind"] == "update_update" and c["table"] == "contact"
    ]
    decide(demo.engine, phone_conflict["id"], "value", "Tess Tester", "phone", "0170 555 0000")
    decide(demo.engine, phone_conflict["id"], "master", "Tess Tester", "updated_at")
    decide_module(demo.engine, waiting.session_id, "crm", "master", "Tess Tester")
    # The checks' lean read of the decided conflicts says what the review's full one says, the rule of the
    # latest decision (resolutions' `decided/<module>/<rule>` metadata) and the module of the table included.
    decided = list_conflicts(demo.engine, waiting.session_id, "decided")
    assert len(decided) > 1
    settings = session_context(demo.engine, waiting.session_id).settings
    assert [
        (c["id"], settings.module_of(c["table"]), c["table"], c["kind"], c["decision"], c["rule"])
        for c in decided_conflicts(demo.engine, waiting.session_id)
    ] == [
        (
            c["id"],
            c["module"],
            c["table"],
            c["kind"],
            {"row": c["decision"]["row"], "fields": c["decision"]["fields"]},
            c["decision"]["rule"],
        )
        for c in decided
    ]
    before = whole_master(demo.engine)

    result = materialize_sync(master_url, str(demo.replica), instance)

    assert result.status == "failed"
    assert "decided_values_match_schema" in result.message
    assert whole_master(demo.engine) == before
    # The load as approval_sensor launches it stops at the same gate.
    apply = (
        build_definitions(master_url)
        .resolve_job_def(APPLY_JOB_NAME)
        .execute_in_process(instance=instance, partition_key=demo.partition, raise_on_error=False)
    )
    assert not apply.success
    assert whole_master(demo.engine) == before
    assert demo.partition not in materialized_partitions(instance, master_load)
    [evaluation] = [e for e in apply.get_asset_check_evaluations() if not e.passed]
    assert evaluation.check_name == "decided_values_match_schema"
    failing = evaluation.metadata["failing_rows"].value
    assert [(row["suite"], row["id"], row["phone"]) for row in failing] == [("decided:contact", 1, "0170 555 0000")]


def test_local_change_frames_from_the_run_equal_those_read_back_from_the_master(
    master_url: str, tmp_path: Path
) -> None:
    """In a run, the local changes' frames are built from the changes detection holds in memory; a later
    run (no such context) reads them from the master: both give the same frames and the same failures."""
    demo = build_demo(master_url, tmp_path / "replicas", AT_MOST_FOUR_PIECES)
    with open_run(demo.engine, demo.replica) as driver:
        in_run = driver.start()
    assert in_run.cached_detected
    read_back = session_context(demo.engine, in_run.session_id)
    assert read_back.cached_detected is None
    for settings in (False, True):
        held, stored = (
            local_change_suites(demo.engine, ctx, with_settings=settings, with_schema=not settings)
            for ctx in (in_run, read_back)
        )
        assert [(s.name, s.columns, s.rows, s.expectations) for s in held] == [
            (s.name, s.columns, s.rows, s.expectations) for s in stored
        ]
        assert sum(len(s.rows) for s in held) > len(held)
        held_report, stored_report = validate(held), validate(stored)
        assert held_report.failing_rows() == stored_report.failing_rows()
        assert held_report.passed == (not settings)
    assert sorted(row["quantity"] for row in held_report.failing_rows()) == [5, 6]


def test_schema_suite_names_wrong_types_lengths_nulls_and_duplicate_keys() -> None:
    table = demo_metadata().tables["contact"]
    info = TableInfo(table, ("id",), True)
    good = {
        "_change_id": 0,
        "_op": "insert",
        "id": 1,
        "company_id": 1,
        "name": "Ada",
        "email": "a@example.com",
        "phone": None,
        "updated_at": None,
    }
    rows = [
        good,
        {**good, "_change_id": 1, "id": 2, "name": None},  # NOT NULL column empty
        {**good, "_change_id": 2, "id": 3, "company_id": "three"},  # not an integer
        {**good, "_change_id": 3, "id": 4, "phone": "x" * 41},  # longer than VARCHAR(40)
        {**good, "_change_id": 4, "id": 4},  # the same key twice
    ]
    suite = FrameSuite(
        "rows:contact", ["_change_id", "_op", *info.columns], rows, schema_expectations(info), ["_change_id", "id"]
    )

    report = validate([suite])

    assert not report.passed
    failed = {(f["expectation"], f["column"]): sorted(r["_change_id"] for r in f["rows"]) for f in report.failures}
    assert failed == {
        ("expect_column_values_to_not_be_null", "name"): [1],
        ("expect_column_values_to_be_in_type_list", "company_id"): [2],
        ("expect_column_value_lengths_to_be_between", "phone"): [3],
        ("expect_column_values_to_be_unique", "id"): [3, 4],
    }
    assert report.evaluated == len(schema_expectations(info))
    assert report.successful == report.evaluated - 4


def test_a_column_the_master_fills_may_be_empty_in_an_insert_only() -> None:
    """NOT NULL with a default: a local insert may leave it to the master; an update may not empty it."""
    metadata = sa.MetaData()
    table = sa.Table(
        "account",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("status", sa.String(10), nullable=False, server_default="new"),
    )
    info = TableInfo(table, ("id",), True)
    rows = [
        {"_change_id": 0, "_op": "insert", "id": 1, "status": None},  # the master's default fills it
        {"_change_id": 1, "_op": "update", "id": 2, "status": None},  # the master would refuse it
        {"_change_id": 2, "_op": "update", "id": 3, "status": "old"},
    ]
    suite = FrameSuite(
        "rows:account", ["_change_id", "_op", *info.columns], rows, schema_expectations(info), ["_change_id", "id"]
    )

    report = validate([suite])

    failed = {(f["expectation"], f["column"]): sorted(r["_change_id"] for r in f["rows"]) for f in report.failures}
    assert failed == {("expect_column_values_to_not_be_null", "status"): [1]}


def test_unknown_expectation_in_the_settings_fails_the_check_visibly() -> None:
    suite = FrameSuite(
        "rows:contact",
        ["_change_id", "name"],
        [{"_change_id": 0, "name": "Ada"}],
        [ExpectationSpec("expect_the_impossible", {"column": "name"})],
        ["_change_id"],
    )

    report = validate([suite])

    assert not report.passed
    assert "is not a Great Expectations expectation" in report.failures[0]["exception"]


def test_apply_job_includes_the_load_gate_and_the_detect_job_does_not() -> None:
    definitions = build_definitions()
    detect = definitions.resolve_job_def("sync_detect")
    apply = definitions.resolve_job_def(APPLY_JOB_NAME)

    def check_names(job: dg.JobDefinition) -> set[str]:
        return {key.name for key in job.asset_layer.asset_graph.asset_check_keys}

    assert check_names(detect) == {
        "local_changes_match_schema",
        "local_changes_meet_settings_expectations",
        "decided_values_match_schema",
        "no_manual_decisions_pending",
    }
    assert check_names(apply) == {
        "resolutions_all_decided",
        "decided_values_match_schema",
        "master_reconciles",
        "no_manual_decisions_pending",
    }
    # The gates before the load block; the reconciliation runs after the commit, when nothing is left to block,
    # and the WARN that decisions are pending does not either (waiting is no error).
    blocking = {key.name: definitions.resolve_asset_graph().get(key).blocking for key in check_names_of(definitions)}
    assert blocking == {
        "local_changes_match_schema": True,
        "local_changes_meet_settings_expectations": True,
        "resolutions_all_decided": True,
        "decided_values_match_schema": True,
        "master_reconciles": False,
        "no_manual_decisions_pending": False,
    }


def check_names_of(definitions: dg.Definitions) -> list[dg.AssetCheckKey]:
    return list(definitions.resolve_asset_graph().asset_check_keys)


def test_checks_executed_without_their_asset_read_the_session_from_the_master(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    """The checks run inside their asset's step; selected alone (the UI's "Execute checks"), the step only
    checks: the session and what the last load recorded come from the master and the instance."""
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)
    assert materialize_sync(master_url, str(demo.replica), instance).status == "done"
    contact = demo_metadata().tables["contact"]
    with demo.engine.begin() as conn:  # another writer, after the commit
        conn.execute(sa.update(contact).where(contact.c.id == 1).values(phone="+1 555 0100"))
    selection = dg.AssetSelection.checks(
        dg.AssetCheckKey(master_load.key, "master_reconciles"),
        dg.AssetCheckKey(local_changes.key, "local_changes_match_schema"),
    )
    definitions = dg.Definitions.merge(
        build_definitions(master_url), dg.Definitions(jobs=[dg.define_asset_job("checks_only", selection)])
    )
    loads_before = len(materializations(instance, master_load))

    # A job of checks alone has no partitioned asset to infer the partitions from: the partition is its tag.
    run = definitions.resolve_job_def("checks_only").execute_in_process(
        instance=instance, tags={"dagster/partition": demo.partition}, raise_on_error=False
    )

    assert run.success
    assert run.get_asset_materialization_events() == [], "only the checks ran, no asset"
    assert len(materializations(instance, master_load)) == loads_before
    evaluations = {e.check_name: e for e in run.get_asset_check_evaluations()}
    assert sorted(evaluations) == ["local_changes_match_schema", "master_reconciles"]
    assert evaluations["local_changes_match_schema"].passed
    reconciled = evaluations["master_reconciles"]
    assert not reconciled.passed and reconciled.severity == dg.AssetCheckSeverity.WARN
    assert "the load verified" in (reconciled.description or "")  # what the load recorded, from the instance
    failing = reconciled.metadata["failing_rows"].value
    assert [(row["table"], row["column"], row["actual"]) for row in failing] == [
        ("contact", "phone", json.dumps("+1 555 0100"))
    ]
    assert reconciled.metadata["evaluated_expectations"].value == 3, "loaded values and both row-count expectations"


def materializations(instance: dg.DagsterInstance, asset: dg.AssetsDefinition) -> list[Any]:
    return list(instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=asset.key), limit=100).records)
