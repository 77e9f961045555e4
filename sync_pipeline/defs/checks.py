"""Blocking asset checks between the steps, validated with Great Expectations 1.x.

GX is called directly (dagster-ge supports only GX < 1) and imported inside the check functions, so
loading the code location stays fast and never imports GX or pandas. Each check builds pandas frames
of the session from the master's sync tables, validates them with suites built from the reflected
master schema (and the settings' per-table `expectations`), and reports GX's statistics and the rows
that failed. A failing check has severity ERROR and is blocking: the downstream assets of the run do
not execute, so the master is never touched after a failed gate.
"""

import json
import os
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync_pipeline.defs.assets import local_changes as local_changes_asset
from sync_pipeline.defs.assets import (
    master_load,
    require_session,
    resolutions,
    table_row_counts,
)
from sync_pipeline.defs.resources import MasterDatabase
from sync_pipeline.engine import store
from sync_pipeline.engine.detect import fetch_rows_by_key
from sync_pipeline.engine.queries import list_conflicts
from sync_pipeline.engine.schema import TableInfo, decode_row, dumps, encode, normalize, reflect_tables
from sync_pipeline.engine.session import SessionContext, load_changes, mark_failed, pending_of
from sync_pipeline.reports import markdown
from sync_pipeline.settings import SyncSettings

OPERATIONS = ("insert", "update", "delete")
MAX_FAILING_ROWS = 100  # per check, in the metadata; the counts are always complete

# ------------------------------------------------------------------------------------------------
# Suites: what to validate, as plain data (GX is imported only when validating)
# ------------------------------------------------------------------------------------------------


@dataclass
class ExpectationSpec:
    type: str  # the GX name, snake_case as users write it in the settings: expect_column_values_to_...
    kwargs: dict[str, Any]


@dataclass
class FrameSuite:
    """One pandas frame and the expectations it must meet."""

    name: str
    columns: list[str]
    rows: list[dict[str, Any]]
    expectations: list[ExpectationSpec]
    index_columns: list[str] = field(default_factory=list)  # identify failing rows in the report


@dataclass
class SuiteOutcome:
    name: str
    evaluated: int
    successful: int
    failures: list[dict[str, Any]]


@dataclass
class ValidationReport:
    outcomes: list[SuiteOutcome]

    @property
    def evaluated(self) -> int:
        return sum(o.evaluated for o in self.outcomes)

    @property
    def successful(self) -> int:
        return sum(o.successful for o in self.outcomes)

    @property
    def passed(self) -> bool:
        return self.evaluated == self.successful

    @property
    def failures(self) -> list[dict[str, Any]]:
        return [f for o in self.outcomes for f in o.failures]

    def success_percent(self) -> float:
        return 100.0 if self.evaluated == 0 else round(100.0 * self.successful / self.evaluated, 2)

    def failing_rows(self) -> list[dict[str, Any]]:
        rows = [
            {"suite": f["suite"], "expectation": f["expectation"], "column": f.get("column"), **row}
            for f in self.failures
            for row in f.get("rows", [])
        ]
        return rows[:MAX_FAILING_ROWS]

    def summary(self) -> str:
        if self.evaluated == 0:
            return "no expectation applies"
        if self.passed:
            return f"{self.evaluated} expectation(s) met"
        parts = []
        for f in self.failures[:5]:
            where = f"{f['suite']}.{f['column']}" if f.get("column") else f["suite"]
            count = f.get("unexpected_count")
            detail = f.get("exception") or (f"{count} failing row(s)" if count else "not met")
            parts.append(f"{f['expectation']} on {where}: {detail}")
        more = len(self.failures) - 5
        return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")

    def metadata(self) -> dict[str, dg.MetadataValue]:
        table = ["| suite | evaluated | successful | success % |", "|---|---:|---:|---:|"]
        for o in self.outcomes:
            percent = 100.0 if o.evaluated == 0 else round(100.0 * o.successful / o.evaluated, 2)
            table.append(f"| {markdown.cell(o.name)} | {o.evaluated} | {o.successful} | {percent} |")
        return {
            "evaluated_expectations": dg.MetadataValue.int(self.evaluated),
            "successful_expectations": dg.MetadataValue.int(self.successful),
            "unsuccessful_expectations": dg.MetadataValue.int(self.evaluated - self.successful),
            "success_percent": dg.MetadataValue.float(self.success_percent()),
            "suites": dg.MetadataValue.md("\n".join(table)),
            "failed_expectations": dg.MetadataValue.json(
                [{k: v for k, v in f.items() if k != "rows"} for f in self.failures][:MAX_FAILING_ROWS]
            ),
            "failing_rows": dg.MetadataValue.json(self.failing_rows()),
        }


def _gx_modules() -> tuple[Any, Any, Any]:
    # GX reads these when it is imported: no usage statistics (the network may be closed) and no
    # progress bars in the run logs.
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    import great_expectations as gx
    import great_expectations.expectations as gxe
    import pandas as pd

    return gx, gxe, pd


def expectation_class(gxe: Any, name: str) -> Any:
    """`expect_column_values_to_be_between` -> `gxe.ExpectColumnValuesToBeBetween`."""
    camel = "".join(part.capitalize() for part in name.split("_"))
    found = getattr(gxe, camel, None)
    if found is None or not name.startswith("expect_"):
        raise ValueError(f"{name!r} is not a Great Expectations expectation")
    return found


def validate(suites: Sequence[FrameSuite]) -> ValidationReport:
    """Validate each frame with its suite in an ephemeral GX context; nothing is written to disk."""
    gx, gxe, pd = _gx_modules()
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    source = context.data_sources.add_pandas("sync_session")
    outcomes: list[SuiteOutcome] = []
    for number, suite in enumerate(suites):
        frame = pd.DataFrame(suite.rows, columns=suite.columns, dtype=object)
        asset = source.add_dataframe_asset(name=f"frame_{number}")
        batch = asset.add_batch_definition_whole_dataframe("session").get_batch(batch_parameters={"dataframe": frame})
        gx_suite = gx.ExpectationSuite(name=suite.name)
        failures: list[dict[str, Any]] = []
        for spec in suite.expectations:
            try:
                gx_suite.add_expectation(expectation_class(gxe, spec.type)(**spec.kwargs))
            except Exception as exc:  # a wrong name or argument in the settings fails this suite, visibly
                failures.append(
                    {
                        "suite": suite.name,
                        "expectation": spec.type,
                        "column": spec.kwargs.get("column"),
                        "exception": f"cannot build the expectation: {exc}",
                    }
                )
        index = [c for c in suite.index_columns if c in suite.columns]
        result = batch.validate(
            gx_suite,
            result_format={
                "result_format": "COMPLETE",
                **({"unexpected_index_column_names": index} if index else {}),
            },
        )
        for item in result.results:
            if item.success:
                continue
            config = item.expectation_config
            exception = (item.exception_info or {}).get("exception_message") if item.exception_info else None
            details = item.result or {}
            rows = [_plain(r) for r in (details.get("unexpected_index_list") or [])][:MAX_FAILING_ROWS]
            failures.append(
                {
                    "suite": suite.name,
                    "expectation": config.type,
                    "column": config.kwargs.get("column"),
                    "unexpected_count": details.get("unexpected_count"),
                    "observed_value": _plain(details.get("observed_value")),
                    "rows": rows,
                    **({"exception": exception} if exception else {}),
                }
            )
        statistics = result.statistics
        broken = len(suite.expectations) - len(gx_suite.expectations)
        outcomes.append(
            SuiteOutcome(
                suite.name,
                int(statistics["evaluated_expectations"]) + broken,
                int(statistics["successful_expectations"]),
                failures,
            )
        )
    return ValidationReport(outcomes)


def _plain(value: Any) -> Any:
    """JSON-safe form of GX's result values (numpy scalars, Decimals, dates) for Dagster metadata."""
    return json.loads(dumps(_unnumpy(value)))


def _unnumpy(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _unnumpy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_unnumpy(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item) and type(value).__module__ == "numpy":
        return item()
    return encode(value)


# ------------------------------------------------------------------------------------------------
# Frames of a session, built from the sync tables
# ------------------------------------------------------------------------------------------------

ROW_MARKERS = ["_change_id", "_op"]


def lenient_value(value: Any, column: sa.Column) -> Any:
    """The column's Python form of a value, or the raw value when the master's type would reject it,
    so that the type and length expectations report it instead of the decoding raising."""
    try:
        normal = normalize(value, column)
    except ValueError:
        return value
    return str(normal) if isinstance(normal, uuid.UUID) else normal


def type_names(column: sa.Column) -> list[str] | None:
    """Type names for expect_column_values_to_be_in_type_list (None: not checked, e.g. JSON).

    GX resolves `Decimal`, `date`, `datetime` and `time` through pandas' dtypes module; `int`,
    `float`, `str`, `bool` and `bytes` are its native names.
    """
    kind = column.type
    if isinstance(kind, sa.Boolean):
        return ["bool"]
    if isinstance(kind, sa.Integer):
        return ["int"]
    if isinstance(kind, sa.Float):
        return ["float", "int"]
    if isinstance(kind, sa.Numeric):
        return ["Decimal"] if getattr(kind, "asdecimal", True) else ["float", "int"]
    if isinstance(kind, sa.DateTime):
        return ["datetime"]
    if isinstance(kind, sa.Date):
        return ["date"]
    if isinstance(kind, sa.Time):
        return ["time"]
    if isinstance(kind, sa.LargeBinary):
        return ["bytes"]
    if isinstance(kind, (sa.Uuid, sa.String)):
        return ["str"]
    return None


def unique_key_expectation(columns: list[str]) -> ExpectationSpec:
    if len(columns) == 1:
        return ExpectationSpec("expect_column_values_to_be_unique", {"column": columns[0]})
    return ExpectationSpec("expect_compound_columns_to_be_unique", {"column_list": columns})


def schema_expectations(info: TableInfo) -> list[ExpectationSpec]:
    """What the master's reflected schema demands of a row written into `info`'s table."""
    pk = list(info.pk)
    specs = [
        ExpectationSpec(
            "expect_table_columns_to_match_set", {"column_set": [*ROW_MARKERS, *info.columns], "exact_match": True}
        ),
        *[ExpectationSpec("expect_column_values_to_not_be_null", {"column": c}) for c in pk],
        unique_key_expectation(pk),
    ]
    for column in info.table.columns:
        if not column.nullable and column.name not in pk:
            specs.append(ExpectationSpec("expect_column_values_to_not_be_null", {"column": column.name}))
        names = type_names(column)
        if names:
            specs.append(
                ExpectationSpec("expect_column_values_to_be_in_type_list", {"column": column.name, "type_list": names})
            )
        length = getattr(column.type, "length", None)
        if isinstance(column.type, sa.String) and length:
            specs.append(
                ExpectationSpec(
                    "expect_column_value_lengths_to_be_between", {"column": column.name, "max_value": int(length)}
                )
            )
    return specs


def settings_expectations(settings: SyncSettings, table: str) -> list[ExpectationSpec]:
    try:
        declared = settings.table(table).expectations
    except KeyError:
        return []
    return [ExpectationSpec(e.type, dict(e.kwargs)) for e in declared]


def row_frame_columns(info: TableInfo, rows: list[dict[str, Any]]) -> list[str]:
    # Columns a row carries that the master's table lacks are kept, so the column-set expectation
    # names them instead of them silently disappearing.
    extra = sorted({k for r in rows for k in r} - set(ROW_MARKERS) - set(info.columns))
    return [*ROW_MARKERS, *info.columns, *extra]


def decode_lenient(data: dict[str, Any] | None, info: TableInfo) -> dict[str, Any]:
    return {
        k: lenient_value(v, info.table.columns[k]) if k in info.table.columns else v for k, v in (data or {}).items()
    }


def local_change_suites(
    engine: Engine, ctx: SessionContext, with_settings: bool, with_schema: bool
) -> list[FrameSuite]:
    records = load_changes(engine, ctx)
    modules = sorted({ctx.settings.module_of(t) for t in ctx.infos})
    suites: list[FrameSuite] = []
    if with_schema:
        suites.append(
            FrameSuite(
                "changes",
                ["_change_id", "module", "table", "op"],
                [
                    {"_change_id": r["change_id"], "module": r["module"], "table": r["table_name"], "op": r["op"]}
                    for r in records
                ],
                [
                    ExpectationSpec(
                        "expect_column_values_to_be_in_set", {"column": "op", "value_set": list(OPERATIONS)}
                    ),
                    ExpectationSpec(
                        "expect_column_values_to_be_in_set", {"column": "table", "value_set": sorted(ctx.infos)}
                    ),
                    ExpectationSpec("expect_column_values_to_be_in_set", {"column": "module", "value_set": modules}),
                    ExpectationSpec("expect_column_values_to_be_unique", {"column": "_change_id"}),
                ],
                ["_change_id", "table"],
            )
        )
    for table, info in ctx.infos.items():
        mine = [r for r in records if r["table_name"] == table]
        pk = list(info.pk)
        if with_schema:
            keys = [
                {"_change_id": r["change_id"], "_op": r["op"], **decode_lenient(json.loads(r["row_key"]), info)}
                for r in mine
            ]
            suites.append(
                FrameSuite(
                    f"keys:{table}",
                    [*ROW_MARKERS, *pk],
                    keys,
                    [
                        *[ExpectationSpec("expect_column_values_to_not_be_null", {"column": c}) for c in pk],
                        unique_key_expectation(pk),
                    ],
                    ["_change_id", *pk],
                )
            )
        rows = [
            {"_change_id": r["change_id"], "_op": r["op"], **decode_lenient(json.loads(r["local"]), info)}
            for r in mine
            if r["op"] in ("insert", "update") and r["local"] is not None
        ]
        specs = [
            *(schema_expectations(info) if with_schema else []),
            *(settings_expectations(ctx.settings, table) if with_settings else []),
        ]
        if specs:
            suites.append(FrameSuite(f"rows:{table}", row_frame_columns(info, rows), rows, specs, ["_change_id", *pk]))
    return suites


def decided_rows(engine: Engine, ctx: SessionContext) -> dict[str, list[dict[str, Any]]]:
    """Per table, the rows decisions write from the replica side: the local row with each decided
    field's chosen value (local, master or edited). Rows where the master's values are kept entirely
    are left out: they write nothing new."""
    records = {r["change_id"]: r for r in load_changes(engine, ctx)}
    with engine.connect() as conn:
        change_of = dict(
            conn.execute(
                sa.select(store.sync_conflict.c.conflict_id, store.sync_conflict.c.change_id).where(
                    store.sync_conflict.c.session_id == ctx.session_id
                )
            ).all()
        )
    out: dict[str, list[dict[str, Any]]] = {}
    for item in list_conflicts(engine, ctx.session_id, "decided"):
        decision = item["decision"] or {}
        record = records.get(change_of.get(item["id"], -1))
        if record is None or item["table"] not in ctx.infos or record["local"] is None:
            continue
        info = ctx.infos[item["table"]]
        master = json.loads(record["master"]) if record["master"] else {}
        row = dict(json.loads(record["local"]))
        writes_local = False
        field_choices: dict[str, dict[str, Any]] = decision.get("fields") or {}
        if field_choices:
            for name, chosen in field_choices.items():
                if chosen["take"] == "master":
                    row[name] = master.get(name)
                elif chosen["take"] == "value":
                    row[name] = chosen.get("value")
                    writes_local = True
                else:
                    writes_local = True
        elif decision.get("row") == "local":
            # Taking the local side of a delete_update deletes the row: no value is written.
            writes_local = item["kind"] != "delete_update"
        if writes_local:
            out.setdefault(item["table"], []).append(
                {"_change_id": record["change_id"], "_op": record["op"], **decode_lenient(row, info)}
            )
    return out


def decided_value_suites(engine: Engine, ctx: SessionContext) -> list[FrameSuite]:
    suites = []
    for table, rows in sorted(decided_rows(engine, ctx).items()):
        info = ctx.infos[table]
        suites.append(
            FrameSuite(
                f"decided:{table}",
                row_frame_columns(info, rows),
                rows,
                [*schema_expectations(info), *settings_expectations(ctx.settings, table)],
                ["_change_id", *info.pk],
            )
        )
    return suites


def _applied_latest(engine: Engine, session_id: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        rows = [
            dict(r)
            for r in conn.execute(
                sa.select(store.sync_applied)
                .where(store.sync_applied.c.session_id == session_id)
                .order_by(store.sync_applied.c.applied_id)
            ).mappings()
        ]
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        latest[(row["table_name"], row["row_key"])] = row
    return list(latest.values())


def loaded_values_suite(engine: Engine, ctx: SessionContext) -> FrameSuite:
    """One row per touched field: the value the load wrote (sync_applied `after`) and the master's now."""
    applied = _applied_latest(engine, ctx.session_id)
    by_table: dict[str, list[dict[str, Any]]] = {}
    for row in applied:
        by_table.setdefault(row["table_name"], []).append(row)
    infos = dict(ctx.infos)
    # An orphan's re-created parent may belong to a table outside the replica's modules.
    infos.update(reflect_tables(engine, [t for t in by_table if t not in infos]))
    rows: list[dict[str, Any]] = []
    with engine.connect() as conn:
        for table, items in by_table.items():
            info = infos[table]
            keys = {}
            for item in items:
                key = decode_row(json.loads(item["row_key"]), info.table) or {}
                keys[item["row_key"]] = tuple(key[c] for c in info.pk)
            current = fetch_rows_by_key(conn, info, keys.values())
            for item in items:
                found = current.get(keys[item["row_key"]])
                after = decode_row(store.loads(item["after"]), info.table)
                if after is None:  # a delete: the row must be gone
                    rows.append(
                        {
                            "table": table,
                            "key": item["row_key"],
                            "column": "*",
                            "expected": "absent",
                            "actual": "absent" if found is None else "present",
                        }
                    )
                    continue
                for name, value in sorted(after.items()):
                    actual = "absent" if found is None else dumps(encode(found.get(name)))
                    rows.append(
                        {
                            "table": table,
                            "key": item["row_key"],
                            "column": name,
                            "expected": dumps(encode(value)),
                            "actual": actual,
                        }
                    )
    return FrameSuite(
        "loaded_values",
        ["table", "key", "column", "expected", "actual"],
        rows,
        [ExpectationSpec("expect_column_pair_values_to_be_equal", {"column_A": "expected", "column_B": "actual"})],
        ["table", "key", "column"],
    )


def row_count_suite(engine: Engine, ctx: SessionContext, before: dict[str, int]) -> FrameSuite:
    moved: defaultdict[str, int] = defaultdict(int)
    inserts: defaultdict[str, int] = defaultdict(int)
    deletes: defaultdict[str, int] = defaultdict(int)
    with engine.connect() as conn:
        for table, op, count in conn.execute(
            sa.select(store.sync_applied.c.table_name, store.sync_applied.c.op, sa.func.count())
            .where(store.sync_applied.c.session_id == ctx.session_id)
            .group_by(store.sync_applied.c.table_name, store.sync_applied.c.op)
        ):
            if op == "insert":
                inserts[table] += count
                moved[table] += count
            elif op == "delete":
                deletes[table] += count
                moved[table] -= count
    now = table_row_counts(engine, ctx.infos)
    rows = [
        {
            "table": t,
            "before": before.get(t),
            "inserts": inserts[t],
            "deletes": deletes[t],
            "expected": None if before.get(t) is None else before[t] + moved[t],
            "actual": now[t],
        }
        for t in sorted(now)
    ]
    return FrameSuite(
        "row_counts",
        ["table", "before", "inserts", "deletes", "expected", "actual"],
        rows,
        [
            ExpectationSpec("expect_column_values_to_not_be_null", {"column": "before"}),
            ExpectationSpec("expect_column_pair_values_to_be_equal", {"column_A": "expected", "column_B": "actual"}),
        ],
        ["table", "before", "inserts", "deletes"],
    )


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------


def check_result(
    report: ValidationReport,
    ctx: SessionContext,
    what: str,
    extra: dict[str, dg.MetadataValue] | None = None,
    description: str | None = None,
) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=report.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description or f"{what}: {report.summary()}",
        metadata={"session_id": dg.MetadataValue.text(ctx.session_id), **report.metadata(), **(extra or {})},
    )


def fail_session_on(engine: Engine, ctx: SessionContext, result: dg.AssetCheckResult, check_name: str) -> None:
    """A replica whose changes fail validation cannot be synchronised: its session ends as failed, with the
    reason on the master, instead of staying open forever."""
    if not result.passed and ctx.status not in ("done", "failed"):
        mark_failed(engine, ctx.session_id, ctx.replica_id, f"blocking check {check_name} failed: {result.description}")


@dg.asset_check(
    asset=local_changes_asset,
    blocking=True,
    description="The session's changes fit the master's schema: keys present and unique per table, NOT NULL "
    "columns filled, value types and string lengths, operations insert/update/delete, only tables and "
    "columns of the replica's modules.",
)
def local_changes_match_schema(context: dg.AssetCheckExecutionContext, master: MasterDatabase) -> dg.AssetCheckResult:
    with master.engine() as engine:
        ctx = require_session(engine, context.partition_key)
        report = validate(local_change_suites(engine, ctx, with_settings=False, with_schema=True))
        result = check_result(report, ctx, "schema suite of the local changes")
        fail_session_on(engine, ctx, result, "local_changes_match_schema")
    return result


@dg.asset_check(
    asset=local_changes_asset,
    blocking=True,
    description="The inserted and updated rows meet the expectations declared per table in the settings "
    "(`expectations:`, frozen into the replica at checkout).",
)
def local_changes_meet_settings_expectations(
    context: dg.AssetCheckExecutionContext, master: MasterDatabase
) -> dg.AssetCheckResult:
    with master.engine() as engine:
        ctx = require_session(engine, context.partition_key)
        report = validate(local_change_suites(engine, ctx, with_settings=True, with_schema=False))
        result = check_result(report, ctx, "settings expectations of the local changes")
        fail_session_on(engine, ctx, result, "local_changes_meet_settings_expectations")
    return result


@dg.asset_check(
    asset=resolutions,
    blocking=True,
    description="Gate of the load: no conflict is undecided. Part of runs that load (job sync_apply); the "
    "detect run leaves it out, since waiting for decisions is normal there.",
)
def resolutions_all_decided(context: dg.AssetCheckExecutionContext, master: MasterDatabase) -> dg.AssetCheckResult:
    with master.engine() as engine:
        ctx = require_session(engine, context.partition_key)
        pending = pending_of(engine, ctx.session_id)
        undecided = [
            {"conflict": c["id"], "module": c["module"], "table": c["table"], "key": c["key"], "kind": c["kind"]}
            for c in list_conflicts(engine, ctx.session_id, "pending")
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
def decided_values_match_schema(context: dg.AssetCheckExecutionContext, master: MasterDatabase) -> dg.AssetCheckResult:
    with master.engine() as engine:
        ctx = require_session(engine, context.partition_key)
        report = validate(decided_value_suites(engine, ctx))
    return check_result(report, ctx, "schema suite of the decided values")


def rows_before_load(context: dg.AssetCheckExecutionContext) -> dict[str, int]:
    """The row counts master_load recorded right before loading this partition (its metadata)."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=master_load.key, asset_partitions=[context.partition_key]),
        limit=1,
    ).records
    if not records or records[0].asset_materialization is None:
        return {}
    metadata = records[0].asset_materialization.metadata
    return {
        key.split("/", 1)[1]: int(value.value)
        for key, value in metadata.items()
        if key.startswith("rows_before/") and value.value is not None
    }


@dg.asset_check(
    asset=master_load,
    blocking=True,
    description="Reconciliation: every key the load touched holds the values written (sync_applied `after`), "
    "deleted keys are gone, and each table's row count moved by exactly inserts - deletes.",
)
def master_reconciles(context: dg.AssetCheckExecutionContext, master: MasterDatabase) -> dg.AssetCheckResult:
    before = rows_before_load(context)
    with master.engine() as engine:
        ctx = require_session(engine, context.partition_key)
        suites = [loaded_values_suite(engine, ctx)]
        if before:
            suites.append(row_count_suite(engine, ctx, before))
        else:
            context.log.info(
                "master_load recorded no row counts (it found the session loaded already): "
                "only the loaded values are compared"
            )
        report = validate(suites)
    return check_result(report, ctx, "reconciliation of the master after the load")


sync_checks: list[dg.AssetChecksDefinition] = [
    local_changes_match_schema,
    local_changes_meet_settings_expectations,
    resolutions_all_decided,
    decided_values_match_schema,
    master_reconciles,
]
