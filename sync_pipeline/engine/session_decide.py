"""Deciding a session's conflicts: the automatic policies (`resolve_session`) and people (`decide`,
`decide_module`). A decision is appended to the history, never overwritten; the session is `ready`
once no conflict is pending.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine import store
from sync_pipeline.engine.errors import (
    AlreadyDecidedError,
    ConflictNotFoundError,
    DecisionError,
)
from sync_pipeline.engine.faults import checkpoint
from sync_pipeline.engine.records import (
    DECIDABLE_STATUSES,
    ConflictStatus,
    ReplicaStatus,
    SessionStatus,
    set_replica_status,
    set_session_status,
)
from sync_pipeline.engine.resolve import (
    FIELD_KINDS,
    auto_decide,
    current_decision,
    is_decided,
    validate_decision,
)
from sync_pipeline.engine.schema import dumps, encode, normalize, reflect_tables
from sync_pipeline.engine.session_state import (
    SessionContext,
    conflicts_of,
    decisions_of,
    detected_from,
    load_changes,
    pending_per_module,
)


def resolve_session(engine: Engine, ctx: SessionContext) -> dict[str, int]:
    """Apply the automatic policies; returns pending conflicts per module (empty: ready to load)."""
    now = store.now_iso()
    detected_at = dt.datetime.fromisoformat(now)
    cached = {d.change.seq: d for d in ctx.cached_detected or []}
    with engine.connect() as conn:
        undecided = [c["change_id"] for c in conflicts_of(conn, ctx.session_id, status=ConflictStatus.PENDING)]
    missing = [change_id for change_id in undecided if change_id not in cached]
    records = {r["change_id"]: r for r in load_changes(engine, ctx, missing)} if missing else {}
    with engine.begin() as conn:
        conflicts = conflicts_of(conn, ctx.session_id)
        history = decisions_of(conn, [c["conflict_id"] for c in conflicts])
        decisions: list[dict[str, Any]] = []
        decided: list[int] = []
        for conflict in conflicts:
            if conflict["status"] == ConflictStatus.DECIDED or history.get(conflict["conflict_id"]):
                continue
            d = cached.get(conflict["change_id"])
            if d is None:
                record = records.get(conflict["change_id"])
                if record is None:
                    continue
                d = detected_from(record, conflict, ctx)
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
                .values(status=ConflictStatus.DECIDED)
            )
        pending = pending_per_module(conn, ctx.session_id)
        set_session_status(
            conn,
            ctx.session_id,
            SessionStatus.WAITING if pending else SessionStatus.READY,
            decision_version=store.sync_session.c.decision_version + 1,
        )
        set_replica_status(conn, ctx.replica_id, ReplicaStatus.WAITING if pending else ReplicaStatus.SYNCING)
    return pending


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
    history = decisions_of(conn, [conflict["conflict_id"]])[conflict["conflict_id"]]
    decided = is_decided(conflict["kind"], names, current_decision(history, names))
    conn.execute(
        sa.update(store.sync_conflict)
        .where(store.sync_conflict.c.conflict_id == conflict["conflict_id"])
        .values(status=ConflictStatus.DECIDED if decided else ConflictStatus.PENDING)
    )
    pending = pending_per_module(conn, conflict["session_id"])
    set_session_status(
        conn,
        conflict["session_id"],
        SessionStatus.WAITING if pending else SessionStatus.READY,
        decision_version=store.sync_session.c.decision_version + 1,
    )
    set_replica_status(conn, session.replica_id, ReplicaStatus.WAITING if pending else ReplicaStatus.SYNCING)
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
        conflicts = conflicts_of(conn, session_id, module=module, status=ConflictStatus.PENDING)
        history = decisions_of(conn, [c["conflict_id"] for c in conflicts])
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
