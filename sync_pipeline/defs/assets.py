"""The sync as assets of group `sync`, one partition per replica:

    local_changes -> conflicts -> resolutions -> master_load -> sync_protocol

Each asset is a thin call into the engine's session steps. Durable state lives in the master's sync
tables, so assets pass nothing through Dagster's IO managers: every step finds its session on the
master by the partition key (owner + short id, which the master maps to the replica id). That is what
lets the apply run, launched days after the detect run, or from another process, continue where the
detect run stopped.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import sqlalchemy as sa
from pydantic import Field
from sqlalchemy.engine import Engine

from sync_pipeline.defs.failures import reports_sync_errors
from sync_pipeline.defs.partitions import replica_id_of_partition, replicas_partitions
from sync_pipeline.defs.resources import MasterDatabase
from sync_pipeline.defs.run_keys import STATE_TAG, may_load_in_run
from sync_pipeline.engine import store
from sync_pipeline.engine.errors import BadInputError, SyncError
from sync_pipeline.engine.faults import checkpoint
from sync_pipeline.engine.queries import list_conflicts
from sync_pipeline.engine.replica import OpenReplica, already_synchronised, open_replica, retire_replica
from sync_pipeline.engine.schema import TableInfo
from sync_pipeline.engine.session import (
    SessionContext,
    counts_of,
    detect_session,
    last_session_of,
    load_with_redetection,
    mark_failed,
    open_session_of,
    pending_of,
    resolve_session,
    session_context,
    start_session,
)
from sync_pipeline.links import review_session_url

SYNC_GROUP = "sync"

# ------------------------------------------------------------------------------------------------
# Reading a partition's session from the sync tables
# ------------------------------------------------------------------------------------------------


def replica_record(engine: Engine, replica_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = (
            conn.execute(sa.select(store.sync_replica).where(store.sync_replica.c.replica_id == replica_id))
            .mappings()
            .first()
        )
    return dict(row) if row else None


def latest_session(engine: Engine, replica_id: str) -> dict[str, Any] | None:
    """The replica's newest session, whatever its status (a replica is synchronised once)."""
    with engine.connect() as conn:
        row = (
            conn.execute(
                sa.select(store.sync_session)
                .where(store.sync_session.c.replica_id == replica_id)
                .order_by(store.sync_session.c.started_at.desc())
            )
            .mappings()
            .first()
        )
    return dict(row) if row else None


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


def require_session(engine: Engine, partition_key: str) -> SessionContext:
    replica_id = require_replica_id(engine, partition_key)
    session = latest_session(engine, replica_id)
    if session is None:
        raise dg.Failure(
            description=f"replica {partition_key} has no session on this master yet",
            metadata={"fix": "materialize local_changes for this partition first (job sync_detect)"},
        )
    return session_context(engine, session["session_id"])


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


def decision_version(engine: Engine, session_id: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(store.sync_session.c.decision_version).where(store.sync_session.c.session_id == session_id)
        ).scalar_one()


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


def open_for_sync(engine: Engine, path: str) -> OpenReplica | None:
    """The replica, validated for a sync; None when its load committed but the process ended before the
    file was retired: the retirement is finished here and there is nothing left to synchronise."""
    replica = open_replica(engine, path, allow_retired=True)
    if replica.record["status"] != "retired":
        return replica
    replica.close()
    if replica.manifest.status == "retired":
        raise already_synchronised(replica.path, replica.manifest, replica.record)
    retire_replica(engine, replica)
    return None


def finish_retirement(engine: Engine, path: str | None) -> bool:
    """Retire the replica file of a loaded session if a crash left it open; True if it had to be done."""
    if not path or not Path(path).is_file():
        return False
    with engine.connect() as conn:
        record = conn.execute(
            sa.select(store.sync_replica.c.status, store.sync_replica.c.file_retired_at).where(
                store.sync_replica.c.path == str(path)
            )
        ).first()
    if record is not None and (record.status != "retired" or record.file_retired_at is not None):
        return False  # not loaded, or its file's retirement is on record already (the master refuses it now)
    replica = open_replica(engine, path, allow_retired=True)
    replica.close()
    if replica.record["status"] != "retired" or replica.manifest.status == "retired":
        return False
    retire_replica(engine, replica)
    return True


@contextmanager
def failing_marks_session(engine: Engine, ctx: SessionContext) -> Iterator[None]:
    """An unexpected error ends the session as failed (as `run_sync` does); bad input leaves it open."""
    try:
        yield
    except (BadInputError, dg.Failure):
        raise
    except Exception as exc:
        mark_failed(engine, ctx.session_id, ctx.replica_id, f"{type(exc).__name__}: {exc}")
        raise


# ------------------------------------------------------------------------------------------------
# Assets
# ------------------------------------------------------------------------------------------------


class LocalChangesConfig(dg.Config):
    replica_path: str | None = Field(
        default=None,
        description="The replica file. Empty: the path the master registered at checkout (or at the replica's "
        "last sync).",
    )


@dg.asset(
    partitions_def=replicas_partitions,
    group_name=SYNC_GROUP,
    description="The replica's net local changes, stored as a session in the master's sync tables; the replica "
    "is frozen from here on. A session already open for the replica continues instead.",
)
@reports_sync_errors
def local_changes(
    context: dg.AssetExecutionContext, config: LocalChangesConfig, master: MasterDatabase
) -> dg.MaterializeResult:
    with master.engine() as engine:
        replica_id = require_replica_id(engine, context.partition_key)
        record = replica_record(engine, replica_id)
        assert record is not None
        retired = record["status"] == "retired"
        path = config.replica_path or record["path"]
        if not path:
            if retired:
                raise retired_failure(record, last_session_of(engine, replica_id))
            raise dg.Failure(
                description=f"the master knows no file for replica {replica_id}",
                metadata={"fix": "launch with config local_changes.replica_path"},
            )
        try:
            replica = open_for_sync(engine, path)
        except SyncError:
            # A retired replica launched again: not an error of the code, so the reason and no stack trace.
            # (A file the crash left unretired is not an error: open_for_sync retires it.)
            if retired:
                raise retired_failure(record, last_session_of(engine, replica_id)) from None
            raise
        if replica is None:
            done = last_session_of(engine, replica_id)
            context.log.info(f"replica {replica_id} was loaded before (session {done}); its file is retired now")
            return dg.MaterializeResult(
                metadata={
                    **session_metadata({"session_id": done or ""}),
                    "replica_path": dg.MetadataValue.path(str(path)),
                    "resumed": dg.MetadataValue.bool(True),
                    **counts_metadata(counts_of(engine, done) if done else {}),
                }
            )
        try:
            if replica.manifest.replica_id != replica_id:
                raise dg.Failure(
                    description=f"{path} holds replica {replica.manifest.replica_id}, not {replica_id}",
                    metadata={"fix": "launch the partition named by the file's replica id"},
                )
            existing = open_session_of(engine, replica_id)
            if existing is None:
                session_id = start_session(engine, replica, dagster_run_id=context.run.run_id)
                context.log.info(f"session {session_id}: local changes of {path} extracted; replica frozen")
                resumed = False
            else:
                session_id = existing["session_id"]
                context.log.info(f"continuing session {session_id} ({existing['status']})")
                resumed = True
        finally:
            replica.close()
        counts = counts_of(engine, session_id)
    return dg.MaterializeResult(
        metadata={
            **session_metadata({"session_id": session_id}),
            "replica_path": dg.MetadataValue.path(str(path)),
            "owner": dg.MetadataValue.text(replica.manifest.owner),
            "resumed": dg.MetadataValue.bool(resumed),
            "changes": dg.MetadataValue.int(
                sum(v for m in counts.values() for k, v in m.items() if k.startswith("local_"))
            ),
            **counts_metadata(counts),
        }
    )


@dg.asset(
    partitions_def=replicas_partitions,
    group_name=SYNC_GROUP,
    deps=[local_changes],
    description="Three-way, field-level conflict detection of the session's changes against the master.",
)
@reports_sync_errors
def conflicts(context: dg.AssetExecutionContext, master: MasterDatabase) -> dg.MaterializeResult:
    with master.engine() as engine:
        ctx = require_session(engine, context.partition_key)
        if ctx.status == "extracted":
            with failing_marks_session(engine, ctx):
                replica = open_replica(engine, ctx.replica_path or "")
                try:
                    detected = detect_session(engine, ctx, replica.row)
                finally:
                    replica.close()
            context.log.info(f"session {ctx.session_id}: {len(detected)} change(s) detected")
        else:
            context.log.info(f"session {ctx.session_id} is {ctx.status}: detection already done")
        counts = counts_of(engine, ctx.session_id)
    return dg.MaterializeResult(
        metadata={
            **session_metadata(ctx),
            "conflicts": dg.MetadataValue.int(sum(m.get("conflicts", 0) for m in counts.values())),
            **counts_metadata(counts),
        }
    )


@dg.asset(
    partitions_def=replicas_partitions,
    group_name=SYNC_GROUP,
    deps=[conflicts],
    description="Policies decide what they can; conflicts of `manual` modules wait for a person. Ends the "
    "detect run: the load runs only when nothing is pending (approval_sensor or `sync-pipeline sync`).",
)
@reports_sync_errors
def resolutions(context: dg.AssetExecutionContext, master: MasterDatabase) -> dg.MaterializeResult:
    with master.engine() as engine:
        ctx = require_session(engine, context.partition_key)
        # Only right after detection do policies run: resolving again would bump the decision
        # version and make approval_sensor launch the same load once more.
        if ctx.status == "detected":
            with failing_marks_session(engine, ctx):
                resolve_session(engine, ctx)
        pending = pending_of(engine, ctx.session_id)
        version = decision_version(engine, ctx.session_id)
        status = (latest_session(engine, ctx.replica_id) or {}).get("status", ctx.status)
        items = list_conflicts(engine, ctx.session_id)
    decided: dict[str, dict[str, int]] = {}
    for item in items:
        if item["status"] == "decided" and item["decision"]:
            rule = item["decision"]["rule"]
            decided.setdefault(item["module"], {}).setdefault(rule, 0)
            decided[item["module"]][rule] += 1
    if pending:
        context.log.info(
            f"session {ctx.session_id}: {pending_summary(pending)}; decide on {review_session_url(ctx.session_id)}"
        )
    # The Runs list shows run tags: a run that stops for a person says so there, not only in its log.
    context.instance.add_run_tags(context.run.run_id, {STATE_TAG: "waiting" if pending else "ready"})
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


@dg.asset(
    partitions_def=replicas_partitions,
    group_name=SYNC_GROUP,
    deps=[resolutions],
    output_required=False,
    description="One transaction into the master; rows the master changed meanwhile go back to detection. "
    "Retires the replica. Not materialized when re-detection left new conflicts waiting.",
)
@reports_sync_errors
def master_load(context: dg.AssetExecutionContext, master: MasterDatabase) -> Iterator[dg.MaterializeResult]:
    with master.engine() as engine:
        ctx = require_session(engine, context.partition_key)
        if ctx.status == "done":
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
        replica = open_replica(engine, ctx.replica_path or "")
        try:
            before = table_row_counts(engine, ctx.infos)
            with failing_marks_session(engine, ctx):
                summary = load_with_redetection(engine, ctx, replica.row, dagster_run_id=context.run.run_id)
        finally:
            replica.close()
        if summary is None:
            pending = pending_of(engine, ctx.session_id)
            context.log.warning(
                f"the master changed during the load of session {ctx.session_id}: "
                f"{sum(pending.values())} new conflict(s) wait for decisions; nothing was loaded"
            )
            context.instance.add_run_tags(context.run.run_id, {STATE_TAG: "waiting"})
            return
        checkpoint("retire")  # the crash-safety tests aim here, as at the same point of run_sync
        retire_replica(engine, replica, store.now_iso())
        after = table_row_counts(engine, ctx.infos)
        counts = counts_of(engine, ctx.session_id)
    context.instance.add_run_tags(context.run.run_id, {STATE_TAG: "done"})
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


@dg.asset(
    partitions_def=replicas_partitions,
    group_name=SYNC_GROUP,
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

    with master.engine() as engine:
        ctx = require_session(engine, context.partition_key)
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
