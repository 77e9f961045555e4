"""A session: extract -> detect -> resolve -> (wait) -> load -> retire, each step persisted in the
master's sync tables so that a session waiting for decisions, or whose process died, resumes.

Each step is a function of its own (the Dagster assets call them one by one); `run_sync` chains
them for the CLI. Bad input is refused before anything is written.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine import store
from sync_pipeline.engine.clock import checkout_time
from sync_pipeline.engine.detect import Detected, FieldDiff, Prefetched, detect_conflicts, verify_bases
from sync_pipeline.engine.dialects import impl_for
from sync_pipeline.engine.errors import (
    AlreadyDecidedError,
    BadInputError,
    ConflictNotFoundError,
    DecisionError,
    SyncError,
)
from sync_pipeline.engine.extract import ChangeSet, RowChange, canonicalize_local_values, extract_changes
from sync_pipeline.engine.faults import checkpoint
from sync_pipeline.engine.load import StaleRows, build_plan, execute_plan
from sync_pipeline.engine.progress import report
from sync_pipeline.engine.replica import (
    OpenReplica,
    already_synchronised,
    freeze,
    open_replica,
    retire_replica,
    unfreeze,
    unfreeze_file,
)
from sync_pipeline.engine.resolve import (
    FIELD_KINDS,
    CurrentDecision,
    auto_decide,
    current_decision,
    is_decided,
    validate_decision,
)
from sync_pipeline.engine.retry import TransientRetries, retry_transient
from sync_pipeline.engine.schema import TableInfo, decode_row, dumps, encode, encode_row, normalize, reflect_tables
from sync_pipeline.settings import SyncSettings, parse_settings

OPEN_STATUSES = ("extracted", "detected", "waiting", "ready", "loading")
DECIDABLE_STATUSES = ("detected", "waiting", "ready")
MAX_REDETECT_ROUNDS = 5

Progress = Callable[[str], None]


@dataclass
class SyncResult:
    session_id: str | None
    replica_id: str
    status: str  # done | waiting | failed | dry-run
    modules: dict[str, dict[str, int]] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)
    message: str = ""

    def as_json(self) -> dict[str, Any]:
        return {
            "session": self.session_id,
            "replica": self.replica_id,
            "status": self.status,
            "modules": self.modules,
            "pending": self.pending,
            "message": self.message,
        }


# ------------------------------------------------------------------------------------------------
# Session context: what every step needs, rebuilt from the sync tables
# ------------------------------------------------------------------------------------------------


@dataclass
class SessionContext:
    session_id: str
    replica_id: str
    replica_path: str | None
    settings: SyncSettings
    infos: dict[str, TableInfo]
    status: str
    # When one process runs the steps, what detection computed is handed to the load instead of re-read.
    cached_detected: list[Detected] | None = None


def session_context(engine: Engine, session_id: str) -> SessionContext:
    with engine.connect() as conn:
        row = (
            conn.execute(
                sa.select(
                    store.sync_session,
                    store.sync_replica.c.settings,
                    store.sync_replica.c.modules,
                    store.sync_replica.c.path,
                )
                .join(store.sync_replica, store.sync_replica.c.replica_id == store.sync_session.c.replica_id)
                .where(store.sync_session.c.session_id == session_id)
            )
            .mappings()
            .first()
        )
    if row is None:
        raise ConflictNotFoundError(
            f"session {session_id} does not exist on this master",
            "list sessions with `sync-pipeline replicas` or `sync-pipeline conflicts list`",
        )
    settings = parse_settings(row["settings"], f"<settings of session {session_id}>")
    infos = reflect_tables(engine, settings.tables(json.loads(row["modules"])))
    return SessionContext(session_id, row["replica_id"], row["path"], settings, infos, row["status"])


def _set_status(conn: Connection, session_id: str, status: str, **extra: Any) -> None:
    conn.execute(
        sa.update(store.sync_session)
        .where(store.sync_session.c.session_id == session_id)
        .values(status=status, **extra)
    )


def _set_replica_status(conn: Connection, replica_id: str, status: str, **extra: Any) -> None:
    conn.execute(
        sa.update(store.sync_replica)
        .where(store.sync_replica.c.replica_id == replica_id)
        .values(status=status, **extra)
    )


def last_session_of(engine: Engine, replica_id: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(store.sync_session.c.session_id)
            .where(store.sync_session.c.replica_id == replica_id, store.sync_session.c.status == "done")
            .order_by(store.sync_session.c.started_at.desc())
        ).scalar()


def open_session_of(engine: Engine, replica_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = (
            conn.execute(
                sa.select(store.sync_session)
                .where(store.sync_session.c.replica_id == replica_id, store.sync_session.c.status.in_(OPEN_STATUSES))
                .order_by(store.sync_session.c.started_at.desc())
            )
            .mappings()
            .first()
        )
    return dict(row) if row else None


# ------------------------------------------------------------------------------------------------
# Step 1: extract
# ------------------------------------------------------------------------------------------------


def _change_record(session_id: str, change_id: int, module: str, change: RowChange, info: TableInfo) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "change_id": change_id,
        "module": module,
        "table_name": change.table,
        "row_key": dumps(change.key_dict(info.pk)),
        "op": change.op,
        "base": None if change.base is None else dumps(change.base),
        "local": None if change.local is None else dumps(change.local),
        "changed": json.dumps(change.changed),
        "local_times": json.dumps(change.times),
    }


def _change_from_record(record: dict[str, Any], info: TableInfo) -> RowChange:
    key = decode_row(json.loads(record["row_key"]), info.table)
    assert key is not None
    return RowChange(
        record["table_name"],
        tuple(key[c] for c in info.pk),
        record["op"],
        decode_row(store.loads(record["base"]), info.table),
        decode_row(store.loads(record["local"]), info.table),
        json.loads(record["changed"]),
        json.loads(record["local_times"]),
        record["change_id"],
    )


def start_session(engine: Engine, replica: OpenReplica, dagster_run_id: str | None = None) -> str:
    """Extract the replica's net changes and store them as a new session; freezes the replica.

    Everything that can be wrong with the replica is found before the first write.
    """
    return _start_session(engine, replica, dagster_run_id)[0]


def _start_session(
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
        if replica.settings.master_change_capture:
            with engine.connect() as conn:
                verify_bases(conn, changes, replica.infos, replica.record["checked_out_at"], seen)
        if detect:
            with engine.connect() as conn:
                checked_out_at = replica.record["checked_out_at"]  # the master's record, read when it was opened
                detected = detect_conflicts(
                    conn, changes, replica.infos, replica.settings, replica.row, seen, checked_out_at
                )
    except BaseException:
        unfreeze(replica)
        raise
    now = store.now_iso()
    records = [
        _change_record(session_id, c.seq, replica.settings.module_of(c.table), c, replica.infos[c.table])
        for c in changes.changes
    ]
    conflicts: list[dict[str, Any]] = []
    if detected is not None:
        updates, conflicts = _detection_rows(session_id, detected, replica.infos, replica.settings, now)
        for record, update in zip(records, updates, strict=True):
            change_id = update.pop("_change_id")  # popped outside the assert: `python -O` skips asserts
            assert record["change_id"] == change_id
            record.update(update)
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
        if now_record["status"] == "retired":
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
                status="extracted" if detected is None else "detected",
                started_at=now,
                dagster_run_id=dagster_run_id,
                summary=json.dumps({"extracted": changes.counts()}),
            )
        )
        _insert_in_chunks(conn, store.sync_change, records)
        _set_replica_status(conn, replica.manifest.replica_id, "syncing", path=str(replica.path.resolve()))
        checkpoint("extract_store")
        if detected is not None:
            _insert_in_chunks(conn, store.sync_conflict, conflicts)
            checkpoint("detect_store")
    return session_id, detected


def _insert_in_chunks(conn: Connection, table: sa.Table, rows: list[dict[str, Any]], stage: str = "store") -> None:
    store.insert_rows(conn, table, rows, lambda done, total: report(stage, done, total))


def load_changes(engine: Engine, ctx: SessionContext, change_ids: list[int] | None = None) -> list[dict[str, Any]]:
    query = sa.select(store.sync_change).where(store.sync_change.c.session_id == ctx.session_id)
    if change_ids is not None:
        query = query.where(store.sync_change.c.change_id.in_(change_ids))
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query.order_by(store.sync_change.c.change_id)).mappings()]


# ------------------------------------------------------------------------------------------------
# Step 2: detect
# ------------------------------------------------------------------------------------------------


def _encode_fields(fields: list[FieldDiff]) -> str:
    return dumps(
        [{"name": f.name, "base": encode(f.base), "local": encode(f.local), "master": encode(f.master)} for f in fields]
    )


def _decode_fields(text: str, info: TableInfo) -> list[FieldDiff]:
    out = []
    for item in json.loads(text):
        column = info.table.columns[item["name"]]
        out.append(FieldDiff(item["name"], *(normalize(item[s], column) for s in ("base", "local", "master"))))
    return out


def _detection_rows(
    session_id: str, detected: list[Detected], infos: dict[str, TableInfo], settings: SyncSettings, now: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """What detection saw, per change (the columns of sync_change it fills), and the conflicts it found."""
    updates, conflicts = [], []
    for d in detected:
        info = infos[d.change.table]
        updates.append(
            {
                "_change_id": d.change.seq,
                "action": d.action,
                "master": None if d.master is None else dumps(d.master),
                "master_times": json.dumps(d.master_times),
                "apply_fields": json.dumps(d.apply_fields),
                "target_key": None if d.target_key is None else dumps(info.key_dict(d.target_key)),
                "note": d.note or None,
            }
        )
        if d.action == "conflict":
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
                    "fields": _encode_fields(d.fields),
                    "policy": settings.policy_for(d.change.table),
                    "status": "pending",
                    "detail": dumps(detail),
                    "created_at": now,
                }
            )
    return updates, conflicts


def detect_session(
    engine: Engine,
    ctx: SessionContext,
    replica_row: Callable[..., Any] | None = None,
    change_ids: list[int] | None = None,
) -> list[Detected]:
    """Detect conflicts for the session's changes (or only `change_ids`, when the load found them stale)."""
    records = load_changes(engine, ctx, change_ids)
    changes = ChangeSet([_change_from_record(r, ctx.infos[r["table_name"]]) for r in records])
    with engine.connect() as conn:
        checked_out_at = checkout_time(conn, ctx.replica_id)
        detected = detect_conflicts(conn, changes, ctx.infos, ctx.settings, replica_row, None, checked_out_at)
    ctx.cached_detected = detected if change_ids is None else None
    now = store.now_iso()
    updates, conflicts = _detection_rows(ctx.session_id, detected, ctx.infos, ctx.settings, now)
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
        _insert_in_chunks(conn, store.sync_conflict, conflicts)
        if earlier:
            _carry_over_decisions(conn, ctx.session_id, earlier)
        _set_status(conn, ctx.session_id, "detected")
        checkpoint("detect_store")
    return detected


def _conflicts_with_decisions(conn: Connection, session_id: str, change_ids: list[int]) -> dict[int, dict[str, Any]]:
    found = {}
    wanted = set(change_ids)
    conflicts = [c for c in _conflicts(conn, session_id) if c["change_id"] in wanted]
    history = _decisions(conn, [c["conflict_id"] for c in conflicts])
    for conflict in conflicts:
        found[conflict["change_id"]] = {**conflict, "decisions": history.get(conflict["conflict_id"], [])}
    return found


def _carry_over_decisions(conn: Connection, session_id: str, earlier: dict[int, dict[str, Any]]) -> None:
    """A conflict detected again exactly as before keeps its decisions (who, when): re-detecting rows
    because the load was refused elsewhere must not make people decide again."""
    for conflict in _conflicts(conn, session_id):
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


# ------------------------------------------------------------------------------------------------
# Step 3: resolve
# ------------------------------------------------------------------------------------------------


def _detected_from(record: dict[str, Any], conflict: dict[str, Any] | None, ctx: SessionContext) -> Detected:
    info = ctx.infos[record["table_name"]]
    change = _change_from_record(record, info)
    target = decode_row(store.loads(record["target_key"]), info.table)
    d = Detected(
        change,
        record["module"],
        record["action"],
        decode_row(store.loads(record["master"]), info.table),
        apply_fields=json.loads(record["apply_fields"] or "[]"),
        master_times=json.loads(record["master_times"] or "{}"),
        target_key=None if target is None else tuple(target[c] for c in info.pk),
        note=record["note"] or "",
    )
    if conflict is not None:
        d.kind = conflict["kind"]
        d.fields = _decode_fields(conflict["fields"], info)
        d.detail = json.loads(conflict["detail"] or "{}")
        parent = d.detail.get("parent_row")
        if parent is not None:
            d.detail["parent_row"] = decode_row(parent, ctx.infos[d.detail["parent_table"]].table)
    return d


def _conflicts(conn: Connection, session_id: str, **filters: Any) -> list[dict[str, Any]]:
    query = sa.select(store.sync_conflict).where(store.sync_conflict.c.session_id == session_id)
    for name, value in filters.items():
        query = query.where(store.sync_conflict.c[name] == value)
    return [dict(r) for r in conn.execute(query.order_by(store.sync_conflict.c.conflict_id)).mappings()]


def _decisions(conn: Connection, conflict_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    return defaultdict(list, store.decision_history(conn, conflict_ids))


def resolve_session(engine: Engine, ctx: SessionContext) -> dict[str, int]:
    """Apply the automatic policies; returns pending conflicts per module (empty: ready to load)."""
    now = store.now_iso()
    detected_at = dt.datetime.fromisoformat(now)
    cached = {d.change.seq: d for d in ctx.cached_detected or []}
    with engine.connect() as conn:
        undecided = [c["change_id"] for c in _conflicts(conn, ctx.session_id, status="pending")]
    missing = [change_id for change_id in undecided if change_id not in cached]
    records = {r["change_id"]: r for r in load_changes(engine, ctx, missing)} if missing else {}
    with engine.begin() as conn:
        conflicts = _conflicts(conn, ctx.session_id)
        history = _decisions(conn, [c["conflict_id"] for c in conflicts])
        decisions: list[dict[str, Any]] = []
        decided: list[int] = []
        for conflict in conflicts:
            if conflict["status"] == "decided" or history.get(conflict["conflict_id"]):
                continue
            d = cached.get(conflict["change_id"])
            if d is None:
                record = records.get(conflict["change_id"])
                if record is None:
                    continue
                d = _detected_from(record, conflict, ctx)
            table = ctx.settings.table(conflict["table_name"])
            choices = auto_decide(d, conflict["policy"], table.modified_column, detected_at)
            if choices is None:
                continue
            decisions.extend(
                {
                    "conflict_id": conflict["conflict_id"],
                    "field": name,
                    "choice": choice,
                    "value": None,
                    "rule": conflict["policy"],
                    "decided_by": None,
                    "decided_at": now,
                }
                for name, choice in choices
            )
            decided.append(conflict["conflict_id"])
            checkpoint("decide")
        # All of the policies' decisions in a few statements: a large session has thousands of conflicts.
        store.insert_rows(conn, store.sync_decision, decisions)
        for start in range(0, len(decided), 1000):
            conn.execute(
                sa.update(store.sync_conflict)
                .where(store.sync_conflict.c.conflict_id.in_(decided[start : start + 1000]))
                .values(status="decided")
            )
        pending = _pending_per_module(conn, ctx.session_id)
        _set_status(
            conn,
            ctx.session_id,
            "waiting" if pending else "ready",
            decision_version=store.sync_session.c.decision_version + 1,
        )
        _set_replica_status(conn, ctx.replica_id, "waiting" if pending else "syncing")
    return pending


def _pending_per_module(conn: Connection, session_id: str) -> dict[str, int]:
    rows = conn.execute(
        sa.select(store.sync_conflict.c.module, sa.func.count())
        .where(store.sync_conflict.c.session_id == session_id, store.sync_conflict.c.status == "pending")
        .group_by(store.sync_conflict.c.module)
    )
    return {module: count for module, count in rows}


# ------------------------------------------------------------------------------------------------
# Decisions by people
# ------------------------------------------------------------------------------------------------


def decide(
    engine: Engine,
    conflict_id: int,
    choice: str,
    by: str,
    field_name: str | None = None,
    value: Any = None,
    seen_decision_id: int | None = None,
) -> dict[str, Any]:
    """Record one person's decision for a conflict (a field of it, or the whole row).

    `seen_decision_id` is the latest decision id the person saw (0: none). If someone decided the
    conflict since, `AlreadyDecidedError` says who and when, and nothing is stored: a decision is
    never overwritten silently. Leave it None to change a decision deliberately.
    """
    if not by or not by.strip():
        raise DecisionError("a decision needs the name of the person who takes it", "pass --by NAME")
    with engine.begin() as conn:
        # Lock the conflict first: two people deciding at once are serialised here.
        conn.execute(
            sa.update(store.sync_conflict)
            .where(store.sync_conflict.c.conflict_id == conflict_id)
            .values(status=store.sync_conflict.c.status)
        )
        if seen_decision_id is not None:
            latest = (
                conn.execute(
                    sa.select(store.sync_decision)
                    .where(store.sync_decision.c.conflict_id == conflict_id)
                    .order_by(store.sync_decision.c.decision_id.desc())
                    .limit(1)
                )
                .mappings()
                .first()
            )
            if latest is not None and latest["decision_id"] != seen_decision_id:
                raise AlreadyDecidedError(conflict_id, latest["decided_by"] or latest["rule"], latest["decided_at"])
        conflict = (
            conn.execute(sa.select(store.sync_conflict).where(store.sync_conflict.c.conflict_id == conflict_id))
            .mappings()
            .first()
        )
        if conflict is None:
            raise ConflictNotFoundError(
                f"conflict {conflict_id} does not exist", "list conflicts with `sync-pipeline conflicts list`"
            )
        _record_decision(conn, dict(conflict), choice, by, field_name, value)
        return dict(conflict)


def _record_decision(
    conn: Connection, conflict: dict[str, Any], choice: str, by: str, field_name: str | None, value: Any
) -> None:
    session = conn.execute(
        sa.select(store.sync_session.c.status, store.sync_session.c.replica_id).where(
            store.sync_session.c.session_id == conflict["session_id"]
        )
    ).one()
    if session.status not in DECIDABLE_STATUSES:
        raise DecisionError(
            f"conflict {conflict['conflict_id']} belongs to session {conflict['session_id']}, which is "
            f"{session.status}: its decisions can no longer change",
            "decisions are read-only once the load has started",
        )
    fields = json.loads(conflict["fields"])
    names = [f["name"] for f in fields]
    validate_decision(conflict["kind"], names, field_name, choice)
    stored_value = None
    if choice == "value":
        info = reflect_tables(conn, [conflict["table_name"]])[conflict["table_name"]]
        column = info.table.columns[field_name]
        try:
            checked = normalize(value, column)
        except ValueError as exc:
            raise DecisionError(
                f"value {value!r} does not fit column {conflict['table_name']}.{field_name}: {exc}",
                "give a value of the column's type",
            ) from None
        if checked is None and not column.nullable:
            raise DecisionError(
                f"column {conflict['table_name']}.{field_name} cannot be empty (NOT NULL)", "give a value"
            )
        stored_value = dumps(encode(checked))
    now = store.now_iso()
    conn.execute(
        sa.insert(store.sync_decision).values(
            conflict_id=conflict["conflict_id"],
            field=field_name,
            choice=choice,
            value=stored_value,
            rule="person",
            decided_by=by,
            decided_at=now,
        )
    )
    history = _decisions(conn, [conflict["conflict_id"]])[conflict["conflict_id"]]
    decided = is_decided(conflict["kind"], names, current_decision(history, names))
    conn.execute(
        sa.update(store.sync_conflict)
        .where(store.sync_conflict.c.conflict_id == conflict["conflict_id"])
        .values(status="decided" if decided else "pending")
    )
    pending = _pending_per_module(conn, conflict["session_id"])
    _set_status(
        conn,
        conflict["session_id"],
        "waiting" if pending else "ready",
        decision_version=store.sync_session.c.decision_version + 1,
    )
    _set_replica_status(conn, session.replica_id, "waiting" if pending else "syncing")
    checkpoint("decide_person")


def decide_module(engine: Engine, session_id: str, module: str, choice: str, by: str) -> int:
    """Take one side for every pending conflict of a module in a session; returns how many."""
    if choice not in ("local", "master"):
        raise DecisionError(f"bulk decisions take local or master, not {choice!r}", "use --take local|master")
    if not by or not by.strip():
        raise DecisionError("a decision needs the name of the person who takes it", "pass --by NAME")
    with engine.begin() as conn:
        exists = conn.execute(
            sa.select(store.sync_session.c.session_id).where(store.sync_session.c.session_id == session_id)
        ).first()
        if exists is None:
            raise ConflictNotFoundError(f"session {session_id} does not exist", "check the session id")
        conflicts = _conflicts(conn, session_id, module=module, status="pending")
        history = _decisions(conn, [c["conflict_id"] for c in conflicts])
        for conflict in conflicts:
            names = [f["name"] for f in json.loads(conflict["fields"])]
            current = current_decision(history.get(conflict["conflict_id"], []), names)
            if current.fields and conflict["kind"] in FIELD_KINDS:
                # Partly decided by a person: fill the open fields only, never overwrite a choice made.
                for name in names:
                    if name not in current.fields:
                        _record_decision(conn, conflict, choice, by, name, None)
            else:
                _record_decision(conn, conflict, choice, by, None, None)
    return len(conflicts)


# ------------------------------------------------------------------------------------------------
# Step 4: load
# ------------------------------------------------------------------------------------------------


def _load_items(engine: Engine, ctx: SessionContext) -> list[tuple[int, Detected, CurrentDecision | None]]:
    with engine.connect() as conn:
        conflicts = {c["change_id"]: c for c in _conflicts(conn, ctx.session_id)}
        history = _decisions(conn, [c["conflict_id"] for c in conflicts.values()])
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
        d = cached.get(record["change_id"]) or _detected_from(record, conflict, ctx)
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
            .where(store.sync_session.c.session_id == ctx.session_id, store.sync_session.c.status == "ready")
            .values(status="loading")
        )
    checkpoint("load_begin")
    items = _load_items(engine, ctx)
    plan = build_plan(items, ctx.infos)
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
        if status == "done":
            return {"already_loaded": True}
        if status != "loading":
            raise DecisionError(
                f"session {ctx.session_id} is {status}, not ready to load",
                "decide the pending conflicts first (`sync-pipeline conflicts list`)",
            )
        result = execute_plan(conn, plan, ctx.infos)
        now = store.now_iso()
        _insert_in_chunks(
            conn,
            store.sync_applied,
            [
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
            ],
            stage="record",
        )
        summary = _summary(conn, ctx, result)
        if retries is not None and retries.total:
            summary["retries"] = retries.as_dict()
        _set_status(
            conn,
            ctx.session_id,
            "done",
            finished_at=now,
            summary=json.dumps(summary),
            **({"dagster_run_id": dagster_run_id} if dagster_run_id else {}),
        )
        _set_replica_status(conn, ctx.replica_id, "retired", retired_at=now)
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
    for conflict in _conflicts(conn, ctx.session_id):
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
        except sa.exc.IntegrityError as exc:
            # A concurrent writer took a key or a reference we rely on: look at every row again. The same
            # refusal twice is the data's own (another load would have moved on to another key).
            reason = str(exc.orig).strip()
            if reason in refused:
                raise SyncError(
                    f"the master refused the session's changes: {reason.splitlines()[0]}",
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


def mark_failed(engine: Engine, session_id: str, replica_id: str, error: str) -> None:
    """The session is abandoned; the replica is unfrozen so that its owner can correct it and sync again
    (a new session reads the whole change log once more)."""
    with engine.begin() as conn:
        status = conn.execute(
            sa.select(store.sync_session.c.status).where(store.sync_session.c.session_id == session_id)
        ).scalar()
        if status == "done":
            return  # the load committed: what failed after it (retiring the file, a report) cannot undo that
        _set_status(conn, session_id, "failed", finished_at=store.now_iso(), error=error[:4000])
        _set_replica_status(conn, replica_id, "failed")
        path = conn.execute(
            sa.select(store.sync_replica.c.path).where(store.sync_replica.c.replica_id == replica_id)
        ).scalar()
    if path:
        unfreeze_file(path)


# ------------------------------------------------------------------------------------------------
# The whole session, for the CLI
# ------------------------------------------------------------------------------------------------


def counts_of(engine: Engine, session_id: str) -> dict[str, dict[str, int]]:
    with engine.connect() as conn:
        summary = conn.execute(
            sa.select(store.sync_session.c.summary).where(store.sync_session.c.session_id == session_id)
        ).scalar()
        data = json.loads(summary or "{}")
        if "modules" in data:
            return data["modules"]
        counts: dict[str, Counter[str]] = defaultdict(Counter)
        for row in conn.execute(
            sa.select(store.sync_change.c.module, store.sync_change.c.op, store.sync_change.c.action).where(
                store.sync_change.c.session_id == session_id
            )
        ):
            counts[row.module][f"local_{row.op}s"] += 1
        for conflict in _conflicts(conn, session_id):
            counts[conflict["module"]][conflict["kind"]] += 1
            counts[conflict["module"]]["conflicts"] += 1
        return {m: dict(c) for m, c in counts.items()}


def pending_of(engine: Engine, session_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        return _pending_per_module(conn, session_id)


def run_sync(engine: Engine, replica_path: str | Path, progress: Progress | None = None) -> SyncResult:
    """Run (or continue) the session of a replica to its end or until it waits for decisions."""
    say = progress or (lambda _message: None)
    replica = open_replica(engine, replica_path, allow_retired=True)
    replica_id = replica.manifest.replica_id
    if replica.record["status"] == "retired":
        replica.close()
        if replica.manifest.status == "retired":
            raise already_synchronised(replica.path, replica.manifest, replica.record)
        # The load committed, but the process ended before the file was retired: finish that only.
        done = last_session_of(engine, replica_id)
        retire_replica(engine, replica)
        return SyncResult(done, replica_id, "done", counts_of(engine, done) if done else {}, {}, "synchronised")
    try:
        existing = open_session_of(engine, replica_id)
        detected = None
        if existing is None:
            say("extracting local changes and detecting conflicts")
            session_id, detected = _start_session(engine, replica, detect=True)
        else:
            session_id = existing["session_id"]
            say(f"continuing session {session_id} ({existing['status']})")
            with engine.begin() as conn:  # the file may have moved (e.g. into the inbox) since it started
                conn.execute(
                    sa.update(store.sync_replica)
                    .where(store.sync_replica.c.replica_id == replica_id)
                    .values(path=str(replica.path.resolve()))
                )
        if detected is None:
            ctx = session_context(engine, session_id)
        else:  # just stored from this replica: its settings and reflected tables are the session's
            ctx = SessionContext(
                session_id, replica_id, str(replica.path.resolve()), replica.settings, replica.infos, "detected"
            )
            ctx.cached_detected = detected
        try:
            if ctx.status == "extracted":
                say("detecting conflicts")
                detect_session(engine, ctx, replica.row)
                ctx.status = "detected"
            if ctx.status == "detected":
                say("applying policies")
                resolve_session(engine, ctx)
            pending = pending_of(engine, session_id)
            if pending:
                return SyncResult(
                    session_id,
                    replica_id,
                    "waiting",
                    counts_of(engine, session_id),
                    pending,
                    "waiting for manual decisions",
                )
            say("loading into the master")
            summary = load_with_redetection(engine, ctx, replica.row)
            if summary is None:
                return SyncResult(
                    session_id,
                    replica_id,
                    "waiting",
                    counts_of(engine, session_id),
                    pending_of(engine, session_id),
                    "the master changed during the load; new conflicts wait for decisions",
                )
        except BadInputError:
            raise
        except Exception as exc:
            mark_failed(engine, session_id, replica_id, f"{type(exc).__name__}: {exc}")
            raise
    finally:
        replica.close()
    checkpoint("retire")
    message = "synchronised"
    try:
        retire_replica(engine, replica, store.now_iso())
    except (OSError, SyncError) as exc:
        # The load committed and the master's record refuses the replica from now on: the sync is done.
        message += f"; the replica file could not be marked retired ({exc}); the master refuses it anyway"
    return SyncResult(session_id, replica_id, "done", counts_of(engine, session_id), {}, message)


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
