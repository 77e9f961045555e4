"""The Great Expectations adapter: suites as plain data, validated with GX 1.x on pandas frames.

GX is called directly (dagster-ge supports only GX < 1) and imported on the first validation, so
loading the code location never imports GX or pandas. What is expensive is paid once per process and
kept at module level: the import (about 2 s), the ephemeral context with its pandas data source and
batch definition, and each GX suite (built once per name and expectation list). A run executed in
process (the sync jobs' executor) therefore pays GX's start-up once for all its checks, and a
long-lived process (`dagster dev`, the CLI's runs) once for all its runs.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from sync_pipeline.engine.schema import dumps, encode
from sync_pipeline.reports import markdown

MAX_FAILING_ROWS = 100  # per check, in the metadata; the counts are always complete


@dataclass
class ExpectationSpec:
    type: str  # the GX name, snake_case as users write it in the settings: expect_column_values_to_...
    kwargs: dict[str, Any]
    # (column, value): rows holding that value are not checked (GX's row condition `column != value`).
    except_where: tuple[str, Any] | None = None


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


@dataclass
class _GreatExpectations:
    """GX's modules and the one ephemeral context of this process, with a reusable batch definition."""

    gx: Any
    gxe: Any
    pd: Any
    batch_definition: Any
    validator: Any  # GX's Validator class: it runs a suite on a batch definition, as Batch.validate does
    suites: dict[str, tuple[Any, list[dict[str, Any]]]] = field(default_factory=dict)


_loaded: _GreatExpectations | None = None
# Dagster runs steps in threads in some executors: the shared context is used by one validation at a time.
_lock = threading.Lock()


def _great_expectations() -> _GreatExpectations:
    global _loaded
    if _loaded is None:
        # GX reads this when it is imported: no usage statistics (the network may be closed).
        os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
        import great_expectations as gx
        import great_expectations.expectations as gxe
        import pandas as pd
        from great_expectations.data_context.types.base import ProgressBarsConfig
        from great_expectations.execution_engine import pandas_execution_engine
        from great_expectations.validator.v1_validator import Validator

        # GX fingerprints each in-memory frame it loads (md5 over pandas' hash of every row) only to label
        # the batch in its result, which no report of ours shows: 0.3 s of the 0.8 s that validating the
        # reconciliation's 60,000-row frame took. Frames whose memory use is over this threshold are never
        # fingerprinted; at 0 none is. The validation itself is the same.
        if hasattr(pandas_execution_engine, "HASH_THRESHOLD"):
            pandas_execution_engine.HASH_THRESHOLD = 0

        context = gx.get_context(mode="ephemeral")
        # No progress bars in the run logs.
        context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
        asset = context.data_sources.add_pandas("sync_session").add_dataframe_asset(name="frame")
        _loaded = _GreatExpectations(gx, gxe, pd, asset.add_batch_definition_whole_dataframe("session"), Validator)
    return _loaded


def warm_up() -> None:
    """Import GX and build its context now (once per process), e.g. to time it apart from a run's checks."""
    with _lock:
        _great_expectations()


def expectation_class(gxe: Any, name: str) -> Any:
    """`expect_column_values_to_be_between` -> `gxe.ExpectColumnValuesToBeBetween`."""
    camel = "".join(part.capitalize() for part in name.split("_"))
    found = getattr(gxe, camel, None)
    if found is None or not name.startswith("expect_"):
        raise ValueError(f"{name!r} is not a Great Expectations expectation")
    return found


def _gx_suite(loaded: _GreatExpectations, suite: FrameSuite) -> tuple[Any, list[dict[str, Any]]]:
    """The GX suite of `suite` and the expectations that could not be built, built once per process."""
    key = dumps([suite.name, [[spec.type, _plain(spec.kwargs), spec.except_where] for spec in suite.expectations]])
    cached = loaded.suites.get(key)
    if cached is not None:
        return cached
    gx_suite = loaded.gx.ExpectationSuite(name=suite.name)
    broken: list[dict[str, Any]] = []
    for spec in suite.expectations:
        try:
            kwargs = dict(spec.kwargs)
            if spec.except_where is not None:
                from great_expectations.expectations.row_conditions import Column

                column, value = spec.except_where
                kwargs["row_condition"] = Column(name=column) != value
            gx_suite.add_expectation(expectation_class(loaded.gxe, spec.type)(**kwargs))
        except Exception as exc:  # a wrong name or argument in the settings fails this suite, visibly
            broken.append(
                {
                    "suite": suite.name,
                    "expectation": spec.type,
                    "column": spec.kwargs.get("column"),
                    "exception": f"cannot build the expectation: {exc}",
                }
            )
    loaded.suites[key] = (gx_suite, broken)
    return gx_suite, broken


def validate(suites: Sequence[FrameSuite]) -> ValidationReport:
    """Validate each frame with its suite in the process's ephemeral GX context; nothing is written to disk."""
    if not suites:  # e.g. no decision writes a value: no reason to load GX in this process
        return ValidationReport([])
    with _lock:
        loaded = _great_expectations()
        return ValidationReport([_validate_one(loaded, suite) for suite in suites])


def _validate_one(loaded: _GreatExpectations, suite: FrameSuite) -> SuiteOutcome:
    frame = loaded.pd.DataFrame(suite.rows, columns=suite.columns, dtype=object)
    gx_suite, broken = _gx_suite(loaded, suite)
    failures = [dict(f) for f in broken]
    # First only whether each expectation is met: GX then skips the unexpected values and their row
    # indexes, which with COMPLETE it computes per row even for an expectation that passes (about half
    # of a 10,000-row suite's time). Only a suite with a failure is validated again, COMPLETE, for the
    # report's counts, observed values and failing rows: the same results, the same statistics.
    result = _run_suite(loaded, frame, gx_suite, {"result_format": "BOOLEAN_ONLY"})
    if not result.success:
        index = [c for c in suite.index_columns if c in suite.columns]
        complete = {"result_format": "COMPLETE", **({"unexpected_index_column_names": index} if index else {})}
        result = _run_suite(loaded, frame, gx_suite, complete)
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
    return SuiteOutcome(
        suite.name,
        int(statistics["evaluated_expectations"]) + len(broken),
        int(statistics["successful_expectations"]),
        failures,
    )


def _run_suite(loaded: _GreatExpectations, frame: Any, gx_suite: Any, result_format: dict[str, Any]) -> Any:
    """What `batch_definition.get_batch(...).validate(suite)` does, but with the frame loaded once: that
    path builds the batch twice, and each time GX fingerprints the whole frame, row by row."""
    validator = loaded.validator(
        batch_definition=loaded.batch_definition,
        batch_parameters={"dataframe": frame},
        result_format=result_format,
    )
    return validator.validate_expectation_suite(gx_suite)


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
