"""The sync as assets of group `sync`, one partition per replica:

    local_changes -> conflicts -> resolutions -> master_load -> sync_protocol

Each asset is a thin call into a step of the engine's run driver (engine/run_driver.py). Durable state
lives in the master's sync tables, so assets pass nothing through Dagster's IO managers: every step
finds its session on the master by the partition key (owner + short id, which the master maps to the
replica id). That is what lets the apply run, launched days after the detect run, or from another
process, continue where the detect run stopped.

The assets with checks (local_changes, resolutions, master_load) evaluate them in their own step, after
the materialization (`sync_step`, defs/checks.py): one step per asset, not one per check as well.
"""

from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import dagster as dg
from pydantic import Field
from sqlalchemy.engine import Engine

from sync_pipeline.defs.check_suites import decided_conflicts
from sync_pipeline.defs.checks import (
    LOCAL_CHANGES,
    LOCAL_CHANGES_CHECKS,
    MASTER_LOAD,
    MASTER_LOAD_CHECKS,
    RESOLUTIONS,
    RESOLUTIONS_CHECKS,
    local_changes_checks,
    master_load_checks,
    plain_metadata,
    resolutions_checks,
)
from sync_pipeline.defs.failures import reports_sync_errors
from sync_pipeline.defs.partitions import replicas_partitions
from sync_pipeline.defs.resources import MasterDatabase
from sync_pipeline.defs.run_keys import STATE_TAG, may_load_in_run
from sync_pipeline.defs.step_session import (
    collector_paused_in_step,
    count_and_keep,
    counts_metadata,
    kept_counts,
    partition_session,
    pending_metadata,
    pending_summary,
    require_replica_id,
    require_session,
    retired_failure,
    session_metadata,
    share_session,
    table_row_counts,
)
from sync_pipeline.engine.errors import SyncError
from sync_pipeline.engine.records import (
    ReplicaStatus,
    SessionStatus,
    decision_version,
    latest_session,
    replica_record,
)
from sync_pipeline.engine.run_driver import driver_for, finish_retirement, resolve_step
from sync_pipeline.engine.session_state import SessionContext, counts_of, last_session_of, pending_of
from sync_pipeline.links import review_session_url

SYNC_GROUP = "sync"


def sync_asset(**kwargs: Any) -> Any:
    """`dg.asset` for one step of a replica's sync: partitioned by replica, in the sync group."""
    return dg.asset(partitions_def=replicas_partitions, group_name=SYNC_GROUP, **kwargs)


def sync_step(
    name: str, description: str, checks: list[dg.AssetCheckSpec], deps: list[dg.AssetKey] | None = None
) -> Any:
    """An asset of a replica's sync whose checks run in its own step: a `dg.multi_asset` of one asset.

    Subsettable, so that a job leaves a check out (sync_detect and sync leave out the load gate) and the UI
    executes checks without the asset; the body materializes the asset only when it is selected
    (`context.selected_asset_keys`) and evaluates only the selected checks. Its outputs are optional: an
    asset that is not materialized (master_load waiting for decisions) is not checked either, and the
    assets after it do not run."""
    return dg.multi_asset(
        name=name,
        specs=[dg.AssetSpec(name, deps=deps or [], description=description, group_name=SYNC_GROUP)],
        check_specs=checks,
        partitions_def=replicas_partitions,
        can_subset=True,
    )


class LocalChangesConfig(dg.Config):
    replica_path: str | None = Field(
        default=None,
        description="The replica file. Empty: the path the master registered at checkout (or at the replica's "
        "last sync).",
    )


@sync_step(
    "local_changes",
    description="The replica's net local changes, detected against the master while the verified file is open "
    "and stored as a session in the master's sync tables; the replica is frozen from here on. A session already "
    "open for the replica continues instead.",
    checks=LOCAL_CHANGES_CHECKS,
)
@reports_sync_errors
@collector_paused_in_step
def local_changes(
    context: dg.AssetExecutionContext, config: LocalChangesConfig, master: MasterDatabase
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    with master.engine() as engine:
        if LOCAL_CHANGES in context.selected_asset_keys:
            yield start_session(context, config, master, engine)
        # The context start_session shared: the checks validate the changes detection holds in memory.
        ctx = require_session(engine, context.partition_key, master.run_state())
        yield from local_changes_checks(context, engine, ctx)


def start_session(
    context: dg.AssetExecutionContext, config: LocalChangesConfig, master: MasterDatabase, engine: Engine
) -> dg.MaterializeResult:
    """local_changes' materialization: the replica's session started (or continued), detected and shared
    with the later steps of the run."""
    with ExitStack() as stack:
        replica_id = require_replica_id(engine, context.partition_key)
        record = replica_record(engine, replica_id)
        assert record is not None
        path = config.replica_path or record["path"]
        try:
            if not path:
                raise dg.Failure(
                    description=f"the master knows no file for replica {replica_id}",
                    metadata={"fix": "launch with config local_changes.replica_path"},
                )
            driver = stack.enter_context(driver_for(engine, replica_id, path))
        except (SyncError, dg.Failure):
            # A retired replica launched again: not an error of the code, so the reason and no stack trace.
            # (A file an interrupted run left unretired is no error: opening it retires it.)
            if record["status"] == ReplicaStatus.RETIRED:
                raise retired_failure(record, last_session_of(engine, replica_id)) from None
            raise
        if driver.replica_id != replica_id:
            raise dg.Failure(
                description=f"{path} holds replica {driver.replica_id}, not {replica_id}",
                metadata={"fix": "launch the partition named by the file's replica id"},
            )
        owner = driver.replica.manifest.owner
        if driver.finished is not None:
            context.log.info(f"replica {replica_id} was loaded before; its file is retired now")
            session_id, resumed = driver.finished.session_id or "", True
        else:
            started = driver.start(dagster_run_id=context.run.run_id)
            share_session(master.run_state(), started)
            session_id, resumed = started.session_id, driver.continued
            context.log.info(f"session {session_id}: {'continued' if resumed else 'extracted and detected'}")
    counts = count_and_keep(engine, session_id, master.run_state()) if session_id else {}
    return dg.MaterializeResult(
        asset_key=LOCAL_CHANGES,
        metadata={
            **session_metadata({"session_id": session_id}),
            "replica_path": dg.MetadataValue.path(str(path)),
            "owner": dg.MetadataValue.text(owner),
            "resumed": dg.MetadataValue.bool(resumed),
            "changes": dg.MetadataValue.int(
                sum(v for m in counts.values() for k, v in m.items() if k.startswith("local_"))
            ),
            **counts_metadata(counts),
        },
    )


@sync_asset(
    deps=[local_changes.key],
    description="Three-way, field-level conflict detection of the session's changes against the master (done "
    "with the extraction, which holds the replica open; here only for a session stored undetected).",
)
@reports_sync_errors
@collector_paused_in_step
def conflicts(context: dg.AssetExecutionContext, master: MasterDatabase) -> dg.MaterializeResult:
    with partition_session(master, context) as (engine, ctx):
        # Stored without detection (start_session): only then is the file needed.
        detecting = ctx.status == SessionStatus.EXTRACTED
        if detecting:
            with driver_for(engine, ctx.replica_id, ctx.replica_path or "") as driver:
                driver.detect(ctx)
        context.log.info(f"session {ctx.session_id} is {ctx.status}: its changes are detected")
        counts = kept_counts(engine, ctx.session_id, master.run_state(), detected_now=detecting)
    return dg.MaterializeResult(
        metadata={
            **session_metadata(ctx),
            "conflicts": dg.MetadataValue.int(sum(m.get("conflicts", 0) for m in counts.values())),
            **counts_metadata(counts),
        }
    )


@sync_step(
    "resolutions",
    deps=[conflicts.key],
    description="Policies decide what they can; conflicts of `manual` modules wait for a person. Ends the "
    "detect run: the load runs only when nothing is pending (approval_sensor or `sync-pipeline sync`).",
    checks=RESOLUTIONS_CHECKS,
)
@reports_sync_errors
@collector_paused_in_step
def resolutions(
    context: dg.AssetExecutionContext, master: MasterDatabase
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    with partition_session(master, context) as (engine, ctx):
        decided = None
        if RESOLUTIONS in context.selected_asset_keys:
            pending = resolve_step(engine, ctx)  # policies run only right after detection
            decided = decided_conflicts(engine, ctx.session_id)  # read once: the metadata and the checks
            yield resolutions_result(context, engine, ctx, pending, decided)
        else:
            pending = pending_of(engine, ctx.session_id)
        yield from resolutions_checks(context, engine, ctx, pending, decided)


def resolutions_result(
    context: dg.AssetExecutionContext,
    engine: Engine,
    ctx: SessionContext,
    pending: dict[str, int],
    decided_items: list[dict[str, Any]],
) -> dg.MaterializeResult:
    """resolutions' materialization: status, decision version, pending and decided conflicts per module (and
    rule of the latest decision); the run tagged `sync/state` waiting or ready."""
    version = decision_version(engine, ctx.session_id)
    status = str((latest_session(engine, ctx.replica_id) or {}).get("status", ctx.status))
    decided: dict[str, dict[str, int]] = {}
    for item in decided_items:
        if item["rule"] is not None:
            # A conflict's module is its table's in the replica's settings, as detection recorded it.
            module = ctx.settings.module_of(item["table"])
            decided.setdefault(module, {}).setdefault(item["rule"], 0)
            decided[module][item["rule"]] += 1
    if pending:
        context.log.info(
            f"session {ctx.session_id}: {pending_summary(pending)}; decide on {review_session_url(ctx.session_id)}"
        )
    # The Runs list shows run tags: a run that stops for a person says so there, not only in its log.
    # Tag and metadata values are plain str: Dagster serialises no enum it does not know.
    context.instance.add_run_tags(
        context.run.run_id, {STATE_TAG: str(SessionStatus.WAITING if pending else SessionStatus.READY)}
    )
    return dg.MaterializeResult(
        asset_key=RESOLUTIONS,
        metadata={
            **session_metadata(ctx),
            "review": dg.MetadataValue.url(review_session_url(ctx.session_id)),
            "status": dg.MetadataValue.text(status),
            "decision_version": dg.MetadataValue.int(version),
            **pending_metadata(pending),
            **counts_metadata(decided, prefix="decided/"),
        },
    )


@sync_step(
    "master_load",
    deps=[resolutions.key],
    description="One transaction into the master; rows the master changed meanwhile go back to detection. "
    "Retires the replica. Not materialized when re-detection left new conflicts waiting.",
    checks=MASTER_LOAD_CHECKS,
)
@reports_sync_errors
@collector_paused_in_step
def master_load(
    context: dg.AssetExecutionContext, master: MasterDatabase
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    with partition_session(master, context) as (engine, ctx):
        if MASTER_LOAD not in context.selected_asset_keys:
            yield from master_load_checks(context, engine, ctx)  # what the last load recorded, from the instance
            return
        loaded = load_session(context, engine, ctx)
        if loaded is None:
            return  # not materialized, so not reconciled; the assets after it do not run
        result, rows_now = loaded
        yield result
        yield from master_load_checks(context, engine, ctx, plain_metadata(result.metadata), rows_now)


def load_session(
    context: dg.AssetExecutionContext, engine: Engine, ctx: SessionContext
) -> tuple[dg.MaterializeResult, dict[str, int] | None] | None:
    """master_load's materialization and each table's row count after the commit (None when the session was
    loaded before); None when nothing is materialized (decisions pending, another launcher's load, new
    conflicts found by the load)."""
    if ctx.status == SessionStatus.DONE:
        if finish_retirement(engine, ctx.replica_path):
            context.log.info(f"session {ctx.session_id} was loaded before; its replica file is retired now")
        else:
            context.log.info(f"session {ctx.session_id} was loaded before: nothing to do")
        metadata = {
            **session_metadata(ctx),
            "already_loaded": dg.MetadataValue.bool(True),
            **counts_metadata(counts_of(engine, ctx.session_id)),
        }
        return dg.MaterializeResult(asset_key=MASTER_LOAD, metadata=metadata), None
    if not may_load_in_run(context, engine, ctx.session_id, ctx.status):
        return None  # the `sync` job with decisions pending, or another launcher's load
    with driver_for(engine, ctx.replica_id, ctx.replica_path or "") as driver:
        before = table_row_counts(engine, ctx.infos)
        # The load, and after its commit the file's retirement (a failure of that is a note, not an error).
        summary = driver.load(ctx, dagster_run_id=context.run.run_id)
        for note in driver.notes:
            context.log.warning(f"session {ctx.session_id}: {note}")
    if summary is None:
        pending = pending_of(engine, ctx.session_id)
        context.log.warning(
            f"the master changed during the load of session {ctx.session_id}: "
            f"{sum(pending.values())} new conflict(s) wait for decisions; nothing was loaded"
        )
        context.instance.add_run_tags(context.run.run_id, {STATE_TAG: str(SessionStatus.WAITING)})
        return None
    # Counted after the commit: the metadata's rows_after and master_reconciles' row counts, once.
    after = table_row_counts(engine, ctx.infos)
    counts = counts_of(engine, ctx.session_id)
    context.instance.add_run_tags(context.run.run_id, {STATE_TAG: str(SessionStatus.DONE)})
    metadata = {
        **session_metadata(ctx),
        "already_loaded": dg.MetadataValue.bool(bool(summary.get("already_loaded"))),
        **counts_metadata(counts),
        **{f"rows_before/{table}": dg.MetadataValue.int(n) for table, n in sorted(before.items())},
        **{f"rows_after/{table}": dg.MetadataValue.int(n) for table, n in sorted(after.items())},
        # Deadlocks, serialization failures and re-detections the load went through (engine/retry.py).
        **{f"retries/{kind}": dg.MetadataValue.int(n) for kind, n in summary.get("retries", {}).items()},
        # What the load checked inside its transaction (the engine's summary); master_reconciles reports it.
        **({"verified": dg.MetadataValue.json(summary["verified"])} if "verified" in summary else {}),
    }
    return dg.MaterializeResult(asset_key=MASTER_LOAD, metadata=metadata), after


@sync_asset(
    deps=[master_load.key],
    description="The session's protocol: written as JSON, Markdown and HTML to $SYNC_HOME/protocols/ (the PDF "
    "on demand: sync_protocol_pdf), and "
    "shown here: per module what was written, every conflict with its values and who or which rule decided.",
)
@reports_sync_errors
@collector_paused_in_step
def sync_protocol(context: dg.AssetExecutionContext, master: MasterDatabase) -> dg.MaterializeResult:
    from sync_pipeline.engine.protocol import build_protocol
    from sync_pipeline.reports.files import default_protocol_folder, write_protocol
    from sync_pipeline.reports.renderers import TEXT_FORMATS, render_markdown

    with partition_session(master, context) as (engine, ctx):
        protocol = build_protocol(engine, ctx.session_id)
        counts = counts_of(engine, ctx.session_id)
    # The PDF is left to its own asset (sync_protocol_pdf): laying it out would keep the sync waiting.
    paths = write_protocol(protocol, default_protocol_folder(), formats=TEXT_FORMATS)
    context.log.info("protocol written: " + ", ".join(str(p) for p in paths.values()))
    return dg.MaterializeResult(
        metadata={
            **session_metadata(ctx),
            "protocol": dg.MetadataValue.md(render_markdown(protocol, max_conflicts=200)),
            "protocol_state": dg.MetadataValue.text(protocol.state),
            **{f"protocol_{fmt}": dg.MetadataValue.path(str(path)) for fmt, path in paths.items()},
            **counts_metadata(counts),
        }
    )


sync_assets: list[dg.AssetsDefinition] = [local_changes, conflicts, resolutions, master_load, sync_protocol]
