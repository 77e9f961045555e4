"""The session's first steps: extract the replica's changes and detect conflicts against the master.

Bad input is refused before anything is written: everything that can be wrong with the replica is
found before the session's one storing transaction.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine import store
from sync_pipeline.engine.clock import checkout_time
from sync_pipeline.engine.detect import Detected, Prefetched, detect_conflicts
from sync_pipeline.engine.errors import (
    SyncError,
)
from sync_pipeline.engine.extract import ChangeSet, canonicalize_local_values, extract_changes
from sync_pipeline.engine.faults import checkpoint
from sync_pipeline.engine.new_keys import refuse_far_sequence_values
from sync_pipeline.engine.progress import report
from sync_pipeline.engine.records import (
    OPEN_STATUSES,
    ConflictStatus,
    ReplicaStatus,
    SessionStatus,
    set_replica_status,
    set_session_status,
)
from sync_pipeline.engine.replica import (
    OpenReplica,
    already_synchronised,
    freeze,
    open_replica,
    unfreeze,
)
from sync_pipeline.engine.schema import TableInfo, dumps, dumps_plain, encode_row
from sync_pipeline.engine.session_state import (
    SessionContext,
    SyncResult,
    change_from_record,
    change_record,
    conflicts_of,
    decisions_of,
    encode_fields,
    insert_in_chunks,
    load_changes,
)
from sync_pipeline.engine.settings import SyncSettings
from sync_pipeline.engine.verify_bases import verify_bases


def start_session(engine: Engine, replica: OpenReplica, dagster_run_id: str | None = None) -> str:
    """Extract the replica's net changes and store them as a new session; freezes the replica.

    Everything that can be wrong with the replica is found before the first write.
    """
    return begin_session(engine, replica, dagster_run_id)[0]


def begin_session(
    engine: Engine, replica: OpenReplica, dagster_run_id: str | None = None, *, detect: bool = False
) -> tuple[str, list[Detected] | None]:
    """Extract (and with `detect`, also detect) in memory, then store the session in one transaction.

    Detecting before storing writes each change once, with what detection saw, instead of inserting it
    and then updating it: the session starts as `detected`. Nothing is written before the transaction,
    so a crash anywhere leaves no session (the next sync starts again from the frozen replica's log).
    """
    session_id = store.new_id()
    seen: Prefetched = {}
    # Frozen before reading the log: no local write can slip in after extraction and be lost.
    freeze(replica, session_id)
    detected: list[Detected] | None = None
    try:
        changes = extract_changes(replica.conn, replica.infos)
        canonicalize_local_values(engine, changes, replica.infos)
        for index, change in enumerate(changes.changes):
            change.seq = index  # from now on a change is known by its change_id
        checked_out_at = replica.record["checked_out_at"]  # the master's record, read when it was opened
        with engine.connect() as conn:
            refuse_far_sequence_values(conn, changes, replica.infos)
            if replica.settings.master_change_capture:
                verify_bases(conn, changes, replica.infos, checked_out_at, seen)
            if detect:
                detected = detect_conflicts(
                    conn, changes, replica.infos, replica.settings, replica.row, seen, checked_out_at
                )
    except BaseException:
        unfreeze(replica)
        raise
    now = store.now_iso()
    conflicts = [] if detected is None else _conflict_rows(session_id, detected, replica.infos, replica.settings, now)
    with engine.begin() as conn:
        # Lock the replica's row, then make sure no other process opened a session for it meanwhile.
        conn.execute(
            sa.update(store.sync_replica)
            .where(store.sync_replica.c.replica_id == replica.manifest.replica_id)
            .values(status=store.sync_replica.c.status)
        )
        now_record = (
            conn.execute(
                sa.select(store.sync_replica).where(store.sync_replica.c.replica_id == replica.manifest.replica_id)
            )
            .mappings()
            .one()
        )
        if now_record["status"] == ReplicaStatus.RETIRED:
            raise already_synchronised(replica.path, replica.manifest, dict(now_record))
        running = conn.execute(
            sa.select(store.sync_session.c.session_id).where(
                store.sync_session.c.replica_id == replica.manifest.replica_id,
                store.sync_session.c.status.in_(OPEN_STATUSES),
            )
        ).scalar()
        if running is not None:
            raise SyncError(
                f"another sync of this replica started meanwhile (session {running})",
                "let it finish; running sync again continues that session",
            )
        conn.execute(
            sa.insert(store.sync_session).values(
                session_id=session_id,
                replica_id=replica.manifest.replica_id,
                status=SessionStatus.EXTRACTED if detected is None else SessionStatus.DETECTED,
                started_at=now,
                dagster_run_id=dagster_run_id,
                summary=json.dumps({"extracted": changes.counts()}),
            )
        )
        _insert_changes(conn, session_id, changes, detected, replica.infos, replica.settings)
        set_replica_status(conn, replica.manifest.replica_id, ReplicaStatus.SYNCING, path=str(replica.path.resolve()))
        checkpoint("extract_store")
        if detected is not None:
            insert_in_chunks(conn, store.sync_conflict, conflicts)
            checkpoint("detect_store")
    return session_id, detected


def _insert_changes(
    conn: Connection,
    session_id: str,
    changes: ChangeSet,
    detected: list[Detected] | None,
    infos: dict[str, TableInfo],
    settings: SyncSettings,
) -> None:
    """The session's change rows, each with what detection saw, encoded and written a chunk at a time:
    the JSON of 100,000 changes held at once would add half again to the sync's peak memory."""
    total = len(changes.changes)
    for start in range(0, total, store.BULK_CHUNK):
        rows = []
        for index in range(start, min(start + store.BULK_CHUNK, total)):
            change = changes.changes[index]
            info = infos[change.table]
            row = change_record(session_id, change.seq, settings.module_of(change.table), change, info)
            if detected is not None:
                seen = detected[index]
                assert seen.change.seq == change.seq  # detection keeps the order of the changes
                row.update(_detection_columns(seen, info))
            rows.append(row)
        store.insert_rows(conn, store.sync_change, rows)
        report("store", start + len(rows), total)


def _detection_columns(d: Detected, info: TableInfo) -> dict[str, Any]:
    """What detection saw of one change: the columns of sync_change it fills."""
    return {
        "action": d.action,
        "master": None if d.master is None else dumps(d.master),
        "master_times": dumps_plain(d.master_times),
        "apply_fields": dumps_plain(d.apply_fields),
        "target_key": None if d.target_key is None else dumps(info.key_dict(d.target_key)),
        "note": d.note or None,
    }


def _conflict_rows(
    session_id: str, detected: list[Detected], infos: dict[str, TableInfo], settings: SyncSettings, now: str
) -> list[dict[str, Any]]:
    """The conflicts detection found, as rows of sync_conflict."""
    conflicts = []
    for d in detected:
        if d.action != "conflict":
            continue
        info = infos[d.change.table]
        detail = dict(d.detail)
        if detail.get("parent_row") is not None:
            detail["parent_row"] = encode_row(detail["parent_row"])
        conflicts.append(
            {
                "session_id": session_id,
                "change_id": d.change.seq,
                "module": d.module,
                "table_name": d.change.table,
                "row_key": dumps(d.change.key_dict(info.pk)),
                "kind": d.kind,
                "fields": encode_fields(d.fields),
                "policy": settings.policy_for(d.change.table),
                "status": ConflictStatus.PENDING,
                "detail": dumps(detail),
                "created_at": now,
            }
        )
    return conflicts


def detect_session(
    engine: Engine,
    ctx: SessionContext,
    replica_row: Callable[..., Any] | None = None,
    change_ids: list[int] | None = None,
) -> list[Detected]:
    """Detect conflicts for the session's changes (or only `change_ids`, when the load found them stale)."""
    records = load_changes(engine, ctx, change_ids)
    changes = ChangeSet([change_from_record(r, ctx.infos[r["table_name"]]) for r in records])
    with engine.connect() as conn:
        checked_out_at = checkout_time(conn, ctx.replica_id)
        detected = detect_conflicts(conn, changes, ctx.infos, ctx.settings, replica_row, None, checked_out_at)
    ctx.cached_detected = detected if change_ids is None else None
    now = store.now_iso()
    updates = [{"_change_id": d.change.seq, **_detection_columns(d, ctx.infos[d.change.table])} for d in detected]
    conflicts = _conflict_rows(ctx.session_id, detected, ctx.infos, ctx.settings, now)
    with engine.begin() as conn:
        earlier: dict[int, dict[str, Any]] = {}
        if change_ids is not None:
            earlier = _conflicts_with_decisions(conn, ctx.session_id, change_ids)
            _drop_conflicts(conn, ctx.session_id, change_ids)
        change = store.sync_change
        statement = (
            sa.update(change)
            .where(change.c.session_id == ctx.session_id, change.c.change_id == sa.bindparam("_change_id"))
            .values(
                {
                    name: sa.bindparam(name)
                    for name in ("action", "master", "master_times", "apply_fields", "target_key", "note")
                }
            )
        )
        for start in range(0, len(updates), store.BULK_CHUNK):
            conn.execute(statement, updates[start : start + store.BULK_CHUNK])
            report("store", min(start + store.BULK_CHUNK, len(updates)), len(updates))
        insert_in_chunks(conn, store.sync_conflict, conflicts)
        if earlier:
            _carry_over_decisions(conn, ctx.session_id, earlier)
        set_session_status(conn, ctx.session_id, SessionStatus.DETECTED)
        checkpoint("detect_store")
    return detected


def _conflicts_with_decisions(conn: Connection, session_id: str, change_ids: list[int]) -> dict[int, dict[str, Any]]:
    found = {}
    wanted = set(change_ids)
    conflicts = [c for c in conflicts_of(conn, session_id) if c["change_id"] in wanted]
    history = decisions_of(conn, [c["conflict_id"] for c in conflicts])
    for conflict in conflicts:
        found[conflict["change_id"]] = {**conflict, "decisions": history.get(conflict["conflict_id"], [])}
    return found


def _carry_over_decisions(conn: Connection, session_id: str, earlier: dict[int, dict[str, Any]]) -> None:
    """A conflict detected again exactly as before keeps its decisions (who, when): re-detecting rows
    because the load was refused elsewhere must not make people decide again."""
    for conflict in conflicts_of(conn, session_id):
        old = earlier.get(conflict["change_id"])
        if old is None or (old["kind"], old["fields"]) != (conflict["kind"], conflict["fields"]):
            continue
        if old["decisions"]:
            conn.execute(
                sa.insert(store.sync_decision),
                [
                    {
                        "conflict_id": conflict["conflict_id"],
                        **{k: d[k] for k in ("field", "choice", "rule", "decided_by", "decided_at")},
                        "value": None if d["value"] is None else dumps(d["value"]),
                    }
                    for d in old["decisions"]
                ],
            )
        conn.execute(
            sa.update(store.sync_conflict)
            .where(store.sync_conflict.c.conflict_id == conflict["conflict_id"])
            .values(status=old["status"])
        )


def _drop_conflicts(conn: Connection, session_id: str, change_ids: list[int]) -> None:
    ids = sa.select(store.sync_conflict.c.conflict_id).where(
        store.sync_conflict.c.session_id == session_id, store.sync_conflict.c.change_id.in_(change_ids)
    )
    conn.execute(sa.delete(store.sync_decision).where(store.sync_decision.c.conflict_id.in_(ids)))
    conn.execute(
        sa.delete(store.sync_conflict).where(
            store.sync_conflict.c.session_id == session_id, store.sync_conflict.c.change_id.in_(change_ids)
        )
    )


def dry_run(engine: Engine, replica_path: str | Path) -> SyncResult:
    """What a sync would do, computed in memory: nothing is written to the master or the replica."""
    replica = open_replica(engine, replica_path)
    try:
        changes = extract_changes(replica.conn, replica.infos)
        canonicalize_local_values(engine, changes, replica.infos)
        with engine.connect() as conn:
            checked_out_at = replica.record["checked_out_at"]  # the master's record, read when it was opened
            detected = detect_conflicts(
                conn, changes, replica.infos, replica.settings, replica.row, None, checked_out_at
            )
    finally:
        replica.close()
    modules: dict[str, Counter[str]] = defaultdict(Counter)
    pending: Counter[str] = Counter()
    for d in detected:
        counts = modules[d.module]
        if d.action == "conflict":
            counts[d.kind or "conflict"] += 1
            counts["conflicts"] += 1
            if replica.settings.policy_for(d.change.table) == "manual":
                pending[d.module] += 1
        elif d.action == "remap":
            counts["inserts"] += 1
            counts["remapped"] += 1
        elif d.action == "apply":
            counts[f"{d.change.op}s"] += 1
        else:
            counts["unchanged"] += 1
    return SyncResult(
        None,
        replica.manifest.replica_id,
        "dry-run",
        {m: dict(c) for m, c in modules.items()},
        dict(pending),
        "dry run: nothing was written",
    )
