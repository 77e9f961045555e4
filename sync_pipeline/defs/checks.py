"""Asset checks between the steps, validated with Great Expectations (through `gx_adapter`) on the suites
of `check_suites`.

Each check is evaluated inside its asset's step (the `check_specs` of the assets in defs/assets.py),
right after the asset's materialization, not in a step of its own: every step of a run costs Dagster
events written to the instance and its orchestration, and inside the step a check takes what the step
holds (the session's context, the pending conflicts, what the load recorded and counted) instead of
reading it back. A check can still be executed alone (the UI's "Execute checks", a job's selection):
the step then evaluates only the selected checks, from the session on the master.

The gates before the load are blocking with severity ERROR: when one fails, the step fails after
reporting it and the downstream assets of the run do not execute, so the master is never touched after
a failed gate. `master_reconciles` runs after the load committed, so it cannot block anything: it
reports what the load verified in its own transaction and warns about a difference found after the
commit.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg
from sqlalchemy.engine import Engine

from sync_pipeline.defs.check_suites import (
    decided_value_suites,
    loaded_values_suite,
    local_change_suites,
    row_count_suite,
)
from sync_pipeline.defs.gx_adapter import (
    MAX_FAILING_ROWS,
    ExpectationSpec,
    FrameSuite,
    SuiteOutcome,
    ValidationReport,
    validate,
)
from sync_pipeline.defs.waiting_check import no_manual_decisions_pending, waiting_result
from sync_pipeline.engine.queries import list_conflicts
from sync_pipeline.engine.records import CLOSED_STATUSES, ConflictStatus
from sync_pipeline.engine.session import SessionContext, mark_failed

# Importable from here as before the split (tests and callers name them through the checks).
__all__ = ["ExpectationSpec", "FrameSuite", "ValidationReport", "validate"]

LOCAL_CHANGES = dg.AssetKey("local_changes")
RESOLUTIONS = dg.AssetKey("resolutions")
MASTER_LOAD = dg.AssetKey("master_load")

local_changes_match_schema = dg.AssetCheckSpec(
    "local_changes_match_schema",
    asset=LOCAL_CHANGES,
    blocking=True,
    description="The session's changes fit the master's schema: keys present and unique per table, NOT NULL "
    "columns filled, value types and string lengths, operations insert/update/delete, only tables and "
    "columns of the replica's modules.",
)
local_changes_meet_settings_expectations = dg.AssetCheckSpec(
    "local_changes_meet_settings_expectations",
    asset=LOCAL_CHANGES,
    blocking=True,
    description="The inserted and updated rows meet the expectations declared per table in the settings "
    "(`expectations:`, frozen into the replica at checkout).",
)
resolutions_all_decided = dg.AssetCheckSpec(
    "resolutions_all_decided",
    asset=RESOLUTIONS,
    blocking=True,
    description="Gate of the load: no conflict is undecided. Part of runs that load (job sync_apply); the "
    "detect run leaves it out, since waiting for decisions is normal there.",
)
decided_values_match_schema = dg.AssetCheckSpec(
    "decided_values_match_schema",
    asset=RESOLUTIONS,
    blocking=True,
    description="Every decided or edited value that will be written meets the same schema suite (and the "
    "settings' expectations) as the local changes.",
)
master_reconciles = dg.AssetCheckSpec(
    "master_reconciles",
    asset=MASTER_LOAD,
    blocking=False,
    description="Reconciliation, after the commit: reports what the load verified inside its own transaction "
    "(a difference there rolls the load back), then compares the master now with what was written: every "
    "touched key holds the values written (sync_applied `after`), deleted keys are gone, each table's row count "
    "moved by inserts - deletes. The load has committed by then, so a difference (another writer, a trigger) "
    "is a warning: it never fails the run or the sync.",
)

LOCAL_CHANGES_CHECKS = [local_changes_match_schema, local_changes_meet_settings_expectations]
RESOLUTIONS_CHECKS = [resolutions_all_decided, decided_values_match_schema, no_manual_decisions_pending]
MASTER_LOAD_CHECKS = [master_reconciles]


def selected(context: dg.AssetExecutionContext, spec: dg.AssetCheckSpec) -> bool:
    """Whether the run executes this check (a job may leave one out: sync_detect and sync leave out the gate
    resolutions_all_decided)."""
    return spec.key in context.selected_asset_check_keys


def check_result(
    spec: dg.AssetCheckSpec,
    report: ValidationReport,
    ctx: SessionContext,
    what: str,
    extra: dict[str, dg.MetadataValue] | None = None,
    description: str | None = None,
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        asset_key=spec.asset_key,
        check_name=spec.name,
        passed=report.passed,
        severity=severity,
        description=description or f"{what}: {report.summary()}",
        metadata={"session_id": dg.MetadataValue.text(ctx.session_id), **report.metadata(), **(extra or {})},
    )


def fail_session_on(engine: Engine, ctx: SessionContext, result: dg.AssetCheckResult, check_name: str) -> None:
    """A replica whose changes fail validation cannot be synchronised: its session ends as failed, with the
    reason on the master, instead of staying open forever."""
    if not result.passed and ctx.status not in CLOSED_STATUSES:
        mark_failed(engine, ctx.session_id, ctx.replica_id, f"blocking check {check_name} failed: {result.description}")


# ------------------------------------------------------------------------------------------------
# local_changes
# ------------------------------------------------------------------------------------------------


def local_changes_checks(
    context: dg.AssetExecutionContext, engine: Engine, ctx: SessionContext
) -> Iterator[dg.AssetCheckResult]:
    """The selected gates of local_changes: the session's changes against the `schema` suite and against
    the settings' expectations; a failure ends the session as failed (fail_session_on)."""
    for spec, settings in ((local_changes_match_schema, False), (local_changes_meet_settings_expectations, True)):
        if not selected(context, spec):
            continue
        what = "settings expectations of the local changes" if settings else "schema suite of the local changes"
        report = validate(local_change_suites(engine, ctx, with_settings=settings, with_schema=not settings))
        result = check_result(spec, report, ctx, what)
        fail_session_on(engine, ctx, result, spec.name)
        yield result


# ------------------------------------------------------------------------------------------------
# resolutions
# ------------------------------------------------------------------------------------------------


def resolutions_checks(
    context: dg.AssetExecutionContext,
    engine: Engine,
    ctx: SessionContext,
    pending: dict[str, int],
    decided: list[dict[str, Any]] | None = None,
) -> Iterator[dg.AssetCheckResult]:
    """The selected checks of resolutions; `pending`: the conflicts pending per module and `decided`: the
    decided conflicts (`decided_conflicts`, None to read them), as the step found them."""
    if selected(context, resolutions_all_decided):
        yield all_decided_result(engine, ctx, pending)
    if selected(context, decided_values_match_schema):
        report = validate(decided_value_suites(engine, ctx, decided))
        yield check_result(decided_values_match_schema, report, ctx, "schema suite of the decided values")
    if selected(context, no_manual_decisions_pending):
        yield waiting_result(ctx, pending)


def all_decided_result(engine: Engine, ctx: SessionContext, pending: dict[str, int]) -> dg.AssetCheckResult:
    """The load gate: fails while any conflict is pending, naming up to MAX_FAILING_ROWS of them."""
    undecided = []
    if pending:
        undecided = [
            {"conflict": c["id"], "module": c["module"], "table": c["table"], "key": c["key"], "kind": c["kind"]}
            for c in list_conflicts(engine, ctx.session_id, ConflictStatus.PENDING)
        ][:MAX_FAILING_ROWS]
    rows = [{"module": m, "pending": n} for m, n in sorted(pending.items())]
    failures = [
        {
            "suite": "pending",
            "expectation": "no_pending_conflicts",
            "unexpected_count": sum(pending.values()),
            "rows": undecided,
        }
    ]
    report = ValidationReport([SuiteOutcome("pending", 1, 0 if pending else 1, failures if pending else [])])
    description = None
    if pending:
        description = (
            "the load was requested but "
            + ", ".join(f"{m} has {n} undecided conflict(s)" for m, n in sorted(pending.items()))
            + f" (session {ctx.session_id}); decide them, then run the load again"
        )
    return check_result(
        resolutions_all_decided,
        report,
        ctx,
        "conflicts decided before the load",
        {
            "pending_total": dg.MetadataValue.int(sum(pending.values())),
            "pending_per_module": dg.MetadataValue.json(rows),
        },
        description,
    )


# ------------------------------------------------------------------------------------------------
# master_load
# ------------------------------------------------------------------------------------------------


def load_metadata(context: dg.AssetExecutionContext) -> dict[str, Any]:
    """What master_load recorded when it loaded this partition (its latest materialization's metadata):
    for master_reconciles executed without the load."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=MASTER_LOAD, asset_partitions=[context.partition_key]),
        limit=1,
    ).records
    if not records or records[0].asset_materialization is None:
        return {}
    return plain_metadata(records[0].asset_materialization.metadata)


def plain_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata as plain values (`MetadataValue.value`), as the instance gives them back."""
    return {key: getattr(value, "value", value) for key, value in metadata.items()}


def rows_before_load(recorded: dict[str, Any]) -> dict[str, int]:
    """The row counts master_load recorded right before loading."""
    return {
        key.split("/", 1)[1]: int(value)
        for key, value in recorded.items()
        if key.startswith("rows_before/") and value is not None
    }


def verified_by_load(recorded: dict[str, Any]) -> str:
    """What the load verified inside its own transaction, in words (master_load's `verified` metadata)."""
    verified = recorded.get("verified")
    if not isinstance(verified, dict):
        return "master_load recorded no verification of its own"
    tables = verified.get("tables")
    per_table = f" ({', '.join(f'{t} {n}' for t, n in sorted(tables.items()))})" if isinstance(tables, dict) else ""
    return f"the load verified {verified.get('rows', 0)} row(s) inside its transaction{per_table}"


def master_load_checks(
    context: dg.AssetExecutionContext,
    engine: Engine,
    ctx: SessionContext,
    recorded: dict[str, Any] | None = None,
    rows_now: dict[str, int] | None = None,
) -> Iterator[dg.AssetCheckResult]:
    """master_reconciles, when selected. `recorded`: the metadata master_load just recorded (plain values),
    None when the check is executed without the load (then read from the instance); `rows_now`: each
    table's row count master_load took after the commit, None to count again."""
    if not selected(context, master_reconciles):
        return
    recorded = load_metadata(context) if recorded is None else recorded
    before = rows_before_load(recorded)
    suites = [loaded_values_suite(engine, ctx)]
    if before:
        suites.append(row_count_suite(engine, ctx, before, rows_now))
    else:
        context.log.info(
            "master_load recorded no row counts (it found the session loaded already): "
            "only the loaded values are compared"
        )
    report = validate(suites)
    verified = verified_by_load(recorded)
    if report.passed:
        description = f"{verified}; after the commit the master still holds what was written: {report.summary()}"
    else:
        description = (
            f"{verified} and committed; since then the master differs from what was written "
            f"(another writer or a trigger changed it after the commit; nothing to redo): {report.summary()}"
        )
    extra = {}
    if isinstance(recorded.get("verified"), dict):
        extra["verified"] = dg.MetadataValue.json(recorded["verified"])
    yield check_result(
        master_reconciles,
        report,
        ctx,
        "reconciliation after the load",
        extra,
        description,
        severity=dg.AssetCheckSeverity.WARN,
    )
