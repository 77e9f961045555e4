"""The Dagster path's shortcuts keep what they replace: the cyclic collector is paused while a step's body
runs (its checks and the protocol) and around the CLI's whole run, and resumed after; the reconciliation
reads and decodes only the last `after` of each written row and compares what it compared before."""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa

from sync_pipeline import dagster_run
from sync_pipeline.dagster_run import materialize_sync
from sync_pipeline.defs import checks as checks_module
from sync_pipeline.defs.check_suites import loaded_values_suite
from sync_pipeline.defs.step_session import collector_paused_in_step
from sync_pipeline.engine import records, store
from sync_pipeline.engine.session import run_sync
from sync_pipeline.engine.session_state import session_context
from sync_pipeline.reports import files as report_files
from sync_pipeline_tests.test_dagster_assets import AUTOMATIC_SETTINGS, build_demo
from sync_pipeline_tests.test_dagster_sync_job import phones, run_sync_job


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


# ------------------------------------------------------------------------------------------------
# The collector
# ------------------------------------------------------------------------------------------------


def test_a_generator_step_pauses_the_collector_only_while_it_runs() -> None:
    seen: list[bool] = []

    @collector_paused_in_step
    def step() -> Iterator[int]:
        seen.append(gc.isenabled())
        yield 1
        seen.append(gc.isenabled())
        yield 2

    assert gc.isenabled()
    results = step()
    assert next(results) == 1
    assert gc.isenabled(), "Dagster's handling of what the step yields is not paused"
    assert list(results) == [2]
    assert seen == [False, False] and gc.isenabled()

    # Stopped early (Dagster closes a step that failed elsewhere): the step's own cleanup runs, resumed.
    closed: list[bool] = []

    @collector_paused_in_step
    def stopped() -> Iterator[int]:
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    early = stopped()
    next(early)
    early.close()
    assert closed == [True] and gc.isenabled()


def test_a_failing_step_resumes_the_collector() -> None:
    @collector_paused_in_step
    def failing() -> Iterator[int]:
        yield 1
        raise ValueError("boom")

    @collector_paused_in_step
    def returning() -> bool:
        return gc.isenabled()

    with pytest.raises(ValueError, match="boom"):
        list(failing())
    assert gc.isenabled()
    assert returning() is False and gc.isenabled()


def test_the_steps_of_a_run_evaluate_checks_and_write_the_protocol_with_the_collector_paused(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run launched by the UI or a sensor (not through materialize_sync): each step pauses it itself."""
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)
    during: dict[str, list[bool]] = {"validate": [], "protocol": []}
    validate, write_protocol = checks_module.validate, report_files.write_protocol

    def validating(*args: Any, **kwargs: Any) -> Any:
        during["validate"].append(gc.isenabled())
        return validate(*args, **kwargs)

    def writing(*args: Any, **kwargs: Any) -> Any:
        during["protocol"].append(gc.isenabled())
        return write_protocol(*args, **kwargs)

    monkeypatch.setattr(checks_module, "validate", validating)
    monkeypatch.setattr(report_files, "write_protocol", writing)
    assert gc.isenabled()

    run = run_sync_job(demo, instance)

    assert run.success and phones(demo) == {1: "+49 170 1111111", 2: "+49 170 2222222"}
    assert during["validate"] and set(during["validate"]) == {False}, "every GX check ran with it paused"
    assert during["protocol"] == [False]
    assert gc.isenabled(), "resumed after the run"
    assert all(e.passed for e in run.get_asset_check_evaluations())


def test_the_cli_run_keeps_the_collector_paused_between_its_steps(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """materialize_sync pauses it around the whole run, as `run_sync` does around the engine's steps: Dagster's
    own work between the steps (event writes, step orchestration) runs paused too."""
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)
    during: list[bool] = []
    handle_new_event = instance.handle_new_event

    def handling(*args: Any, **kwargs: Any) -> Any:
        during.append(gc.isenabled())
        return handle_new_event(*args, **kwargs)

    monkeypatch.setattr(instance, "handle_new_event", handling)

    result = materialize_sync(demo.master_url, str(demo.replica), instance)

    assert result.status == "done", result.message
    assert during and set(during) == {False}, "every event of the run was written with it paused"
    assert gc.isenabled()


def test_the_cli_run_resumes_the_collector_when_the_run_raises(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)

    def broken(*_args: Any, **_kwargs: Any) -> Any:
        assert not gc.isenabled()
        raise RuntimeError("the instance is gone")

    monkeypatch.setattr(dagster_run, "_run_job", broken)
    with pytest.raises(RuntimeError, match="the instance is gone"):
        materialize_sync(demo.master_url, str(demo.replica), instance)
    assert gc.isenabled()


# ------------------------------------------------------------------------------------------------
# The reconciliation's read of the applied history
# ------------------------------------------------------------------------------------------------


def _applied(engine: sa.Engine, session_id: str) -> list[dict[str, Any]]:
    """The session's whole applied history in write order, every column, `before` and `after` decoded (as the
    reconciliation read it before)."""
    table = store.sync_applied
    with engine.connect() as conn:
        found = conn.execute(
            sa.select(table).where(table.c.session_id == session_id).order_by(table.c.applied_id)
        ).mappings()
        rows = [dict(row) for row in found]
    return [{**row, "before": store.loads(row["before"]), "after": store.loads(row["after"])} for row in rows]


def _last_writes(engine: sa.Engine, session_id: str) -> list[tuple[str, str, Any]]:
    """Each written row's last write, from the whole history (in the order of the rows' first writes)."""
    latest: dict[tuple[str, str], Any] = {}
    for row in _applied(engine, session_id):
        latest[(row["table_name"], row["row_key"])] = row["after"]
    return [(table, key, after) for (table, key), after in latest.items()]


def test_the_reconciliation_decodes_only_the_last_write_of_each_row(
    master_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)
    result = run_sync(demo.engine, demo.replica)
    assert result.status == "done" and result.session_id
    ctx = session_context(demo.engine, result.session_id)
    applied = _applied(demo.engine, result.session_id)
    # A row written twice (a remap, a duplicate): only the second write is what the master must hold.
    first = next(row for row in applied if row["after"] is not None and row["table_name"] == "contact")
    rewritten = {**first["after"], "phone": "+49 170 9999999"}
    with demo.engine.begin() as conn:
        conn.execute(
            store.sync_applied.insert().values(
                session_id=result.session_id,
                change_id=first["change_id"],
                table_name=first["table_name"],
                row_key=first["row_key"],
                op="update",
                before=json.dumps(first["after"]),
                after=json.dumps(rewritten),
                source="change",
                applied_at=store.now_iso(),
            )
        )

    assert records.applied_after_latest(demo.engine, result.session_id) == _last_writes(demo.engine, result.session_id)

    decoded: list[Any] = []
    loads = records.loads

    def counting(text: str | None) -> Any:
        decoded.append(text)
        return loads(text)

    monkeypatch.setattr(records, "loads", counting)
    suite = loaded_values_suite(demo.engine, ctx)

    distinct = {(row["table_name"], row["row_key"]) for row in applied}
    assert len(decoded) == len(distinct), "one `after` decoded per written row: no `before`, no earlier write"
    compared = {(r["key"], r["column"]): (r["expected"], r["actual"]) for r in suite.rows}
    expected, actual = compared[(first["row_key"], "phone")]
    assert expected == '"+49 170 9999999"' and actual != expected, "the last write is the one compared"
    others = [pair for where, pair in compared.items() if where != (first["row_key"], "phone")]
    assert others and all(written == now for written, now in others)
