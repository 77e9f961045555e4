"""The session's load: one transaction of the approved changes into the master, the applied history,
the session done and the replica retired on the master. Rows the master changed after detection go
back to detection first (`load_with_redetection`).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine import store
from sync_pipeline.engine.detect import Detected
from sync_pipeline.engine.dialects import impl_for
from sync_pipeline.engine.errors import (
    DecisionError,
    SyncError,
)
from sync_pipeline.engine.faults import checkpoint
from sync_pipeline.engine.load import StaleRows, build_plan, execute_plan
from sync_pipeline.engine.records import ReplicaStatus, SessionStatus, set_replica_status, set_session_status
from sync_pipeline.engine.resolve import (
    CurrentDecision,
    current_decision,
)
from sync_pipeline.engine.retry import TransientRetries, retry_transient
from sync_pipeline.engine.schema import dumps, encode
from sync_pipeline.engine.session_decide import resolve_session
from sync_pipeline.engine.session_detect import detect_session
from sync_pipeline.engine.session_state import (
    SessionContext,
    conflicts_of,
    decisions_of,
    detected_from,
    insert_in_chunks,
    load_changes,
)

MAX_REDETECT_ROUNDS = 5


def _load_items(engine: Engine, ctx: SessionContext) -> list[tuple[int, Detected, CurrentDecision | None]]:
    with engine.connect() as conn:
        conflicts = {c["change_id"]: c for c in conflicts_of(conn, ctx.session_id)}
        history = decisions_of(conn, [c["conflict_id"] for c in conflicts.values()])
    if ctx.cached_detected is not None:
        cached = {d.change.seq: d for d in ctx.cached_detected}
        ctx.cached_detected = None
        records: list[dict[str, Any]] = [{"change_id": change_id} for change_id in cached]
    else:
        cached = {}
        records = load_changes(engine, ctx)
    items = []
    for record in records:
        conflict = conflicts.get(record["change_id"])
        d = cached.get(record["change_id"]) or detected_from(record, conflict, ctx)
        decision = None
        if conflict is not None:
            names = [f.name for f in d.fields]
            decision = current_decision(history.get(conflict["conflict_id"], []), names)
        items.append((record["change_id"], d, decision))
    return items


def load_session(
    engine: Engine, ctx: SessionContext, dagster_run_id: str | None = None, retries: TransientRetries | None = None
) -> dict[str, Any]:
    """One transaction: the session's approved changes, the applied history, the session done and the
    replica retired on the master. Raises StaleRows (nothing written) if the master moved meanwhile.
    """
    with engine.begin() as conn:
        # From here on decisions are read-only: what is loaded is what was decided.
        conn.execute(
            sa.update(store.sync_session)
            .where(
                store.sync_session.c.session_id == ctx.session_id, store.sync_session.c.status == SessionStatus.READY
            )
            .values(status=SessionStatus.LOADING)
        )
    checkpoint("load_begin")
    items = _load_items(engine, ctx)
    plan = build_plan(items, ctx.infos)
    del items  # what detection saw beyond the plan (master rows, conflict fields) is not needed any more
    with engine.begin() as conn:
        # A write takes SQLite's lock now, so that no writer slips in between check and write.
        impl_for(conn).lock_for_write(
            conn,
            sa.update(store.sync_session)
            .where(store.sync_session.c.session_id == ctx.session_id)
            .values(status=store.sync_session.c.status),
        )
        status = conn.execute(
            sa.select(store.sync_session.c.status)
            .where(store.sync_session.c.session_id == ctx.session_id)
            .with_for_update()
        ).scalar_one()
        if status == SessionStatus.DONE:
            return {"already_loaded": True}
        if status != SessionStatus.LOADING:
            raise DecisionError(
                f"session {ctx.session_id} is {status}, not ready to load",
                "decide the pending conflicts first (`sync-pipeline conflicts list`)",
            )
        result = execute_plan(conn, plan, ctx.infos)
        now = store.now_iso()
        insert_in_chunks(
            conn,
            store.sync_applied,
            (
                {
                    "session_id": ctx.session_id,
                    "change_id": a.change_id,
                    "table_name": a.table,
                    "row_key": dumps(ctx.infos[a.table].key_dict(a.key)),
                    "op": a.op,
                    "before": None if a.before is None else dumps(a.before),
                    "after": None if a.after is None else dumps(a.after),
                    "source": a.source,
                    "applied_at": now,
                }
                for a in result.applied
            ),
            stage="record",
            total=len(result.applied),
        )
        summary = _summary(conn, ctx, result)
        if retries is not None and retries.total:
            summary["retries"] = retries.as_dict()
        set_session_status(
            conn,
            ctx.session_id,
            SessionStatus.DONE,
            finished_at=now,
            summary=json.dumps(summary),
            **({"dagster_run_id": dagster_run_id} if dagster_run_id else {}),
        )
        set_replica_status(conn, ctx.replica_id, ReplicaStatus.RETIRED, retired_at=now)
        checkpoint("load_commit")
    return summary


def _summary(conn: Connection, ctx: SessionContext, result: Any) -> dict[str, Any]:
    modules: dict[str, Counter[str]] = {m: Counter() for m in ctx.settings.modules}
    for a in result.applied:
        modules[ctx.settings.module_of(a.table)][f"{a.op}s" if a.source != "remap" else "inserts"] += 1
    # Every local key that names another master row: new keys and duplicates alike (the protocol's list).
    for table, _key in result.key_map:
        modules[ctx.settings.module_of(table)]["remapped"] += 1
    for _change_id, table, _key, _why in result.dropped:
        modules[ctx.settings.module_of(table)]["dropped"] += 1
    for conflict in conflicts_of(conn, ctx.session_id):
        modules[conflict["module"]][conflict["kind"]] += 1
        modules[conflict["module"]]["conflicts"] += 1
    return {
        "modules": {m: dict(c) for m, c in modules.items() if c},
        "remapped": [
            {"table": t, "local_key": list(map(encode, k)), "master_key": list(map(encode, v))}
            for (t, k), v in result.key_map.items()
        ],
        "dropped": [{"table": t, "key": list(map(encode, k)), "reason": why} for _, t, k, why in result.dropped],
        # Checked inside the load's transaction before the commit (load_verify): rows, deletes, columns.
        "verified": result.verified,
    }


def refusal_text(reason: str) -> str:
    """The database's refusal in one line: its message and the detail naming the row or the key
    (PostgreSQL's `DETAIL:  Key (lower(email))=(x@y) already exists.`), without its hints and context."""
    lines = [line.strip() for line in reason.splitlines() if line.strip()]
    detail = next((line for line in lines[1:] if line.startswith("DETAIL:")), None)
    return lines[0] if detail is None else f"{lines[0]} ({detail.removeprefix('DETAIL:').strip()})"


def load_with_redetection(
    engine: Engine,
    ctx: SessionContext,
    replica_row: Callable[..., Any] | None = None,
    dagster_run_id: str | None = None,
) -> dict[str, Any] | None:
    """Load; rows the master changed after detection go back to detection, then the load is retried.

    Returns the summary, or None when re-detection produced conflicts that wait for a person.
    """
    refused: set[str] = set()
    # Deadlocks and serialization failures with other loads are retried; the summary counts them, and the
    # re-detections, which concurrent loads of overlapping replicas cause.
    retries = TransientRetries()
    for _round in range(MAX_REDETECT_ROUNDS):
        try:
            return retry_transient(lambda: load_session(engine, ctx, dagster_run_id, retries), retries)
        except StaleRows as stale:
            stale_ids = stale.change_ids
            retries.counts["redetected_stale"] += 1
        except sa.exc.DBAPIError as exc:
            if not impl_for(engine).refused_by_master(exc):
                raise
            # A concurrent writer took a key or a reference we rely on: look at every row again. The same
            # refusal twice is the data's own (another load would have moved on to another key).
            reason = str(exc.orig).strip()
            if reason in refused:
                raise SyncError(
                    f"the master refused the session's changes: {refusal_text(reason)}",
                    "see which row the message names; correct it on the master or in a new replica",
                ) from None
            refused.add(reason)
            retries.counts["redetected_refused"] += 1
            stale_ids = [r["change_id"] for r in load_changes(engine, ctx)]
        detect_session(engine, ctx, replica_row, change_ids=stale_ids)
        if resolve_session(engine, ctx):
            return None
    raise SyncError(
        f"the master kept changing the session's rows during {MAX_REDETECT_ROUNDS} load attempts",
        "run the sync again when the master is quieter",
    )
