"""The sync as assets of group `sync`, one partition per replica:

    local_changes -> conflicts -> resolutions -> master_load -> sync_protocol

Each asset is a thin call into a step of the engine's run driver (engine/run_driver.py). Durable state
lives in the master's sync tables, so assets pass nothing through Dagster's IO managers: every step
finds its session on the master by the partition key (owner + short id, which the master maps to the
replica id). That is what lets the apply run, launched days after the detect run, or from another
process, continue where the detect run stopped.
"""

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import dagster as dg
import sqlalchemy as sa
from pydantic import Field
from sqlalchemy.engine import Engine

from sync_pipeline.defs.failures import reports_sync_errors
from sync_pipeline.defs.partitions import replica_id_of_partition, replicas_partitions
from sync_pipeline.defs.resources import MasterDatabase
from sync_pipeline.defs.run_keys import STATE_TAG, may_load_in_run
from sync_pipeline.engine.errors import SyncError
from sync_pipeline.engine.queries import list_conflicts
from sync_pipeline.engine.records import (
    ConflictStatus,
    ReplicaStatus,
    SessionStatus,
    decision_version,
    latest_session,
    replica_record,
)
from sync_pipeline.engine.run_driver import driver_for, finish_retirement, resolve_step
from sync_pipeline.engine.schema import TableInfo
from sync_pipeline.engine.session_state import SessionContext, counts_of, last_session_of, pending_of, session_context
from sync_pipeline.links import review_session_url

SYNC_GROUP = "sync"


def sync_asset(**kwargs: Any) -> Any:
    """`dg.asset` for one step of a replica's sync: partitioned by replica, in the sync group."""
    return dg.asset(partitions_def=replicas_partitions, group_name=SYNC_GROUP, **kwargs)


# ------------------------------------------------------------------------------------------------
# Reading a partition's session from the sync tables
# ------------------------------------------------------------------------------------------------


def require_replica_id(engine: Engine, partition_key: str) -> str:
    """The replica a partition names, by the master's own record of partition keys."""
    replica_id = replica_id_of_partition(engine, partition_key)
    if replica_id is None:
        raise dg.Failure(
            description=f"partition {partition_key} names no replica of this master",
            metadata={
                "fix": "check out the replica from this master, or set SYNC_MASTER_URL to the master it came from"
            },
        )
    return replica_id


def require_session(engine: Engine, partition_key: str, shared: dict[str, Any] | None = None) -> SessionContext:
    """The partition's latest session. `shared`: what the steps of one run share in this process
    (`MasterDatabase.run_state`); a context an earlier step of the run built is taken from there, with
    the status the master records now, instead of being rebuilt (settings parsed, tables reflected)."""
    replica_id = require_replica_id(engine, partition_key)
    session = latest_session(engine, replica_id)
    if session is None:
        raise dg.Failure(
            description=f"replica {partition_key} has no session on this master yet",
            metadata={"fix": "materialize local_changes for this partition first (job sync_detect)"},
        )
    known = (shared or {}).get(_SESSION)
    if isinstance(known, SessionContext) and known.session_id == session["session_id"]:
        known.status = session["status"]
        return known
    ctx = session_context(engine, session["session_id"])
    share_session(shared, ctx)
    return ctx


_SESSION = "session"  # the key of the run's session context in MasterDatabase.run_state()


def share_session(shared: dict[str, Any] | None, ctx: SessionContext) -> None:
    """Hand `ctx` to the later steps of the run: its reflected tables and settings, and, right after
    detection, the detected changes the policies and the load use instead of reading them back (as
    `run_sync` hands them from step to step)."""
    if shared is not None:
        shared[_SESSION] = ctx


@contextmanager
def partition_session(
    master: MasterDatabase, context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext
) -> Iterator[tuple[Engine, SessionContext]]:
    """The master's engine and the session of the run's partition: how every step and check begins."""
    with master.engine() as engine:
        yield engine, require_session(engine, context.partition_key, master.run_state())


def table_row_counts(engine: Engine, infos: dict[str, TableInfo]) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            name: conn.execute(sa.select(sa.func.count()).select_from(info.table)).scalar_one()
            for name, info in infos.items()
        }


def counts_metadata(counts: dict[str, dict[str, int]], prefix: str = "") -> dict[str, dg.MetadataValue]:
    """`crm/update_update: 3` as numeric metadata, so the UI plots each count across runs."""
    return {
        f"{prefix}{module}/{kind}": dg.MetadataValue.int(int(value))
        for module, kinds in sorted(counts.items())
        for kind, value in sorted(kinds.items())
    }


def pending_metadata(pending: dict[str, int]) -> dict[str, dg.MetadataValue]:
    out = {f"pending/{module}": dg.MetadataValue.int(count) for module, count in sorted(pending.items())}
    out["pending_total"] = dg.MetadataValue.int(sum(pending.values()))
    return out


def pending_summary(pending: dict[str, int]) -> str:
    """`5 manual decisions pending: crm 5`."""
    total = sum(pending.values())
    noun = "decision" if total == 1 else "decisions"
    return f"{total} manual {noun} pending: " + ", ".join(f"{m} {n}" for m, n in sorted(pending.items()))


def session_metadata(ctx: SessionContext | dict[str, Any]) -> dict[str, dg.MetadataValue]:
    session_id = ctx.session_id if isinstance(ctx, SessionContext) else ctx["session_id"]
    return {"session_id": dg.MetadataValue.text(session_id)}


def retired_failure(record: dict[str, Any], session_id: str | None) -> dg.Failure:
    """A launch of a retired replica: the readable reason, for the run's failure."""
    return dg.Failure(
        description=f"replica {record['partition_key'] or record['replica_id']} ({record['owner']}) was synchronised "
        f"and retired at {record['retired_at']}; a replica is synchronised only once",
        metadata={
            "session_id": dg.MetadataValue.text(session_id or ""),
            "fix": dg.MetadataValue.text(
                "nothing to do: its sessions and protocol stay on the master (`sync-pipeline history`, "
                "`protocol`); for new work check out a new replica with `sync-pipeline checkout`"
            ),
        },
        allow_retries=False,
    )


# ------------------------------------------------------------------------------------------------
# Assets
# ------------------------------------------------------------------------------------------------


class LocalChangesConfig(dg.Config):
    replica_path: str | None = Field(
        default=None,
        description="The replica file. Empty: the path the master registered at checkout (or at the replica's "
        "last sync).",
    )


@sync_asset(
    description="The replica's net local changes, detected against the master while the verified file is open "
    "and stored as a session in the master's sync tables; the replica is frozen from here on. A session already "
    "open for the replica continues instead.",
)
@reports_sync_errors
def local_changes(
    context: dg.AssetExecutionContext, config: LocalChangesConfig, master: MasterDatabase
) -> dg.MaterializeResult:
    with master.engine() as engine, ExitStack() as stack:
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
        counts = counts_of(engine, session_id) if session_id else {}
    return dg.MaterializeResult(
        metadata={
            **session_metadata({"session_id": session_id}),
            "replica_path": dg.MetadataValue.path(str(path)),
            "owner": dg.MetadataValue.text(owner),
            "resumed": dg.MetadataValue.bool(resumed),
            "changes": dg.MetadataValue.int(
                sum(v for m in counts.values() for k, v in m.items() if k.startswith("local_"))
            ),
            **counts_metadata(counts),
        }
    )


@sync_asset(
    deps=[local_changes],
    description="Three-way, field-level conflict detection of the session's changes against the master (done "
    "with the extraction, which holds the replica open; here only for a session stored undetected).",
)
@reports_sync_errors
def conflicts(context: dg.AssetExecutionContext, master: MasterDatabase) -> dg.MaterializeResult:
    with partition_session(master, context) as (engine, ctx):
        # Stored without detection (start_session): only then is the file needed.
        if ctx.status == SessionStatus.EXTRACTED:
            with driver_for(engine, ctx.replica_id, ctx.replica_path or "") as driver:
                driver.detect(ctx)
        context.log.info(f"session {ctx.session_id} is {ctx.status}: its changes are detected")
        counts = counts_of(engine, ctx.session_id)
    return dg.MaterializeResult(
        metadata={
            **session_metadata(ctx),
            "conflicts": dg.MetadataValue.int(sum(m.get("conflicts", 0) for m in counts.values())),
            **counts_metadata(counts),
        }
    )


@sync_asset(
    deps=[conflicts],
    description="Policies decide what they can; conflicts of `manual` modules wait for a person. Ends the "
    "detect run: the load runs only when nothing is pending (approval_sensor or `sync-pipeline sync`).",
)
@reports_sync_errors
def resolutions(context: dg.AssetExecutionContext, master: MasterDatabase) -> dg.MaterializeResult:
    with partition_session(master, context) as (engine, ctx):
        pending = resolve_step(engine, ctx)  # policies run only right after detection
        version = decision_version(engine, ctx.session_id)
        status = str((latest_session(engine, ctx.replica_id) or {}).get("status", ctx.status))
        items = list_conflicts(engine, ctx.session_id)
    decided: dict[str, dict[str, int]] = {}
    for item in items:
        if item["status"] == ConflictStatus.DECIDED and item["decision"]:
            rule = item["decision"]["rule"]
            decided.setdefault(item["module"], {}).setdefault(rule, 0)
            decided[item["module"]][rule] += 1
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
        metadata={
            **session_metadata(ctx),
            "review": dg.MetadataValue.url(review_session_url(ctx.session_id)),
            "status": dg.MetadataValue.text(status),
            "decision_version": dg.MetadataValue.int(version),
            **pending_metadata(pending),
            **counts_metadata(decided, prefix="decided/"),
        }
    )


@sync_asset(
    deps=[resolutions],
    output_required=False,
    description="One transaction into the master; rows the master changed meanwhile go back to detection. "
    "Retires the replica. Not materialized when re-detection left new conflicts waiting.",
)
@reports_sync_errors
def master_load(context: dg.AssetExecutionContext, master: MasterDatabase) -> Iterator[dg.MaterializeResult]:
    with partition_session(master, context) as (engine, ctx):
        if ctx.status == SessionStatus.DONE:
            if finish_retirement(engine, ctx.replica_path):
                context.log.info(f"session {ctx.session_id} was loaded before; its replica file is retired now")
            else:
                context.log.info(f"session {ctx.session_id} was loaded before: nothing to do")
            yield dg.MaterializeResult(
                metadata={
                    **session_metadata(ctx),
                    "already_loaded": dg.MetadataValue.bool(True),
                    **counts_metadata(counts_of(engine, ctx.session_id)),
                }
            )
            return
        if not may_load_in_run(context, engine, ctx.session_id, ctx.status):
            return  # the `sync` job with decisions pending, or another launcher's load: not materialized
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
            return
        after = table_row_counts(engine, ctx.infos)
        counts = counts_of(engine, ctx.session_id)
    context.instance.add_run_tags(context.run.run_id, {STATE_TAG: str(SessionStatus.DONE)})
    yield dg.MaterializeResult(
        metadata={
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
    )


@sync_asset(
    deps=[master_load],
    description="The session's protocol: written as JSON, Markdown and HTML to $SYNC_HOME/protocols/ (the PDF "
    "on demand: sync_protocol_pdf), and "
    "shown here: per module what was written, every conflict with its values and who or which rule decided.",
)
@reports_sync_errors
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
