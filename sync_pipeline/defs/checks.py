"""Asset checks between the steps, validated with Great Expectations (through `gx_adapter`) on the suites
of `check_suites`.

The gates before the load are blocking with severity ERROR: when one fails, the downstream assets of
the run do not execute, so the master is never touched after a failed gate. `master_reconciles` runs
after the load committed, so it cannot block anything: it reports what the load verified in its own
transaction and warns about a difference found after the commit.
"""

from typing import Any

import dagster as dg
from sqlalchemy.engine import Engine

from sync_pipeline.defs.assets import local_changes as local_changes_asset
from sync_pipeline.defs.assets import master_load, partition_session, resolutions
from sync_pipeline.defs.check_suites import (
    decided_value_suites,
    loaded_values_suite,
    local_change_suites,
    row_count_suite,
)
from sync_pipeline.defs.failures import reports_sync_errors
from sync_pipeline.defs.gx_adapter import (
    MAX_FAILING_ROWS,
    ExpectationSpec,
    FrameSuite,
    SuiteOutcome,
    ValidationReport,
    validate,
)
from sync_pipeline.defs.resources import MasterDatabase
from sync_pipeline.engine.queries import list_conflicts
from sync_pipeline.engine.records import CLOSED_STATUSES, ConflictStatus
from sync_pipeline.engine.session import SessionContext, mark_failed, pending_of

# Importable from here as before the split (tests and callers name them through the checks).
__all__ = ["ExpectationSpec", "FrameSuite", "ValidationReport", "sync_checks", "validate"]


def check_result(
    report: ValidationReport,
    ctx: SessionContext,
    what: str,
    extra: dict[str, dg.MetadataValue] | None = None,
    description: str | None = None,
    severity: dg.AssetCheckSeverity = dg.AssetCheckSeverity.ERROR,
) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
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


def _local_changes_gate(
    context: dg.AssetCheckExecutionContext, master: MasterDatabase, suite: str, check_name: str
) -> dg.AssetCheckResult:
    """Validate the session's changes against the `schema` or the `settings` suite; a failure ends the
    session as failed (fail_session_on)."""
    settings = suite == "settings"
    what = "settings expectations of the local changes" if settings else "schema suite of the local changes"
    with partition_session(master, context) as (engine, ctx):
        report = validate(local_change_suites(engine, ctx, with_settings=settings, with_schema=not settings))
        result = check_result(report, ctx, what)
        fail_session_on(engine, ctx, result, check_name)
    return result


@dg.asset_check(
    asset=local_changes_asset,
    blocking=True,
    description="The session's changes fit the master's schema: keys present and unique per table, NOT NULL "
    "columns filled, value types and string lengths, operations insert/update/delete, only tables and "
    "columns of the replica's modules.",
)
@reports_sync_errors
def local_changes_match_schema(context: dg.AssetCheckExecutionContext, master: MasterDatabase) -> dg.AssetCheckResult:
    return _local_changes_gate(context, master, "schema", "local_changes_match_schema")


@dg.asset_check(
    asset=local_changes_asset,
    blocking=True,
    description="The inserted and updated rows meet the expectations declared per table in the settings "
    "(`expectations:`, frozen into the replica at checkout).",
)
@reports_sync_errors
def local_changes_meet_settings_expectations(
    context: dg.AssetCheckExecutionContext, master: MasterDatabase
) -> dg.AssetCheckResult:
    return _local_changes_gate(context, master, "settings", "local_changes_meet_settings_expectations")


@dg.asset_check(
    asset=resolutions,
    blocking=True,
    description="Gate of the load: no conflict is undecided. Part of runs that load (job sync_apply); the "
    "detect run leaves it out, since waiting for decisions is normal there.",
)
@reports_sync_errors
def resolutions_all_decided(context: dg.AssetCheckExecutionContext, master: MasterDatabase) -> dg.AssetCheckResult:
    with partition_session(master, context) as (engine, ctx):
        pending = pending_of(engine, ctx.session_id)
        undecided = [
            {"conflict": c["id"], "module": c["module"], "table": c["table"], "key": c["key"], "kind": c["kind"]}
            for c in list_conflicts(engine, ctx.session_id, ConflictStatus.PENDING)
        ][:MAX_FAILING_ROWS]
    rows = [{"module": m, "pending": n} for m, n in sorted(pending.items())]
    report = ValidationReport(
        [
            SuiteOutcome(
                "pending",
                1,
                0 if pending else 1,
                [
                    {
                        "suite": "pending",
                        "expectation": "no_pending_conflicts",
                        "unexpected_count": sum(pending.values()),
                        "rows": undecided,
                    }
                ]
                if pending
                else [],
            )
        ]
    )
    description = None
    if pending:
        description = (
            "the load was requested but "
            + ", ".join(f"{m} has {n} undecided conflict(s)" for m, n in sorted(pending.items()))
            + f" (session {ctx.session_id}); decide them, then run the load again"
        )
    return check_result(
        report,
        ctx,
        "conflicts decided before the load",
        {
            "pending_total": dg.MetadataValue.int(sum(pending.values())),
            "pending_per_module": dg.MetadataValue.json(rows),
        },
        description,
    )


@dg.asset_check(
    asset=resolutions,
    blocking=True,
    description="Every decided or edited value that will be written meets the same schema suite (and the "
    "settings' expectations) as the local changes.",
)
@reports_sync_errors
def decided_values_match_schema(context: dg.AssetCheckExecutionContext, master: MasterDatabase) -> dg.AssetCheckResult:
    with partition_session(master, context) as (engine, ctx):
        report = validate(decided_value_suites(engine, ctx))
    return check_result(report, ctx, "schema suite of the decided values")


def load_metadata(context: dg.AssetCheckExecutionContext) -> dict[str, Any]:
    """What master_load recorded when it loaded this partition (its latest materialization's metadata)."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=master_load.key, asset_partitions=[context.partition_key]),
        limit=1,
    ).records
    if not records or records[0].asset_materialization is None:
        return {}
    return {key: value.value for key, value in records[0].asset_materialization.metadata.items()}


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


@dg.asset_check(
    asset=master_load,
    blocking=False,
    description="Reconciliation, after the commit: reports what the load verified inside its own transaction "
    "(a difference there rolls the load back), then compares the master now with what was written: every "
    "touched key holds the values written (sync_applied `after`), deleted keys are gone, each table's row count "
    "moved by inserts - deletes. The load has committed by then, so a difference (another writer, a trigger) "
    "is a warning: it never fails the run or the sync.",
)
@reports_sync_errors
def master_reconciles(context: dg.AssetCheckExecutionContext, master: MasterDatabase) -> dg.AssetCheckResult:
    recorded = load_metadata(context)
    before = rows_before_load(recorded)
    with partition_session(master, context) as (engine, ctx):
        suites = [loaded_values_suite(engine, ctx)]
        if before:
            suites.append(row_count_suite(engine, ctx, before))
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
    return check_result(
        report, ctx, "reconciliation after the load", extra, description, severity=dg.AssetCheckSeverity.WARN
    )


sync_checks: list[dg.AssetChecksDefinition] = [
    local_changes_match_schema,
    local_changes_meet_settings_expectations,
    resolutions_all_decided,
    decided_values_match_schema,
    master_reconciles,
]
