"""The sync tables as the shells (Dagster, the review page, the CLI) read and write them.

`store.py` declares the tables; this module is the one place outside the engine's session steps that
queries them: the status values and their allowed moves, the decision history and the rule of which
decision is in force, and every read a shell needs (sessions ready to load, replicas and their
partition keys, the applied history a check compares). A shell imports this module, never `store`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from sync_pipeline.engine import store
from sync_pipeline.engine.store import loads, now_iso, read_meta, write_meta

__all__ = [
    "CLOSED_STATUSES",
    "DECIDABLE_STATUSES",
    "OPEN_STATUSES",
    "ConflictStatus",
    "ReplicaStatus",
    "SessionStatus",
    "now_iso",
    "read_meta",
    "write_meta",
]


# ------------------------------------------------------------------------------------------------
# Statuses and their moves
# ------------------------------------------------------------------------------------------------


class SessionStatus(StrEnum):
    """`sync_session.status`. Str-valued: the stored text is the value, as before the enum."""

    EXTRACTED = "extracted"  # changes stored, detection not yet
    DETECTED = "detected"  # conflicts stored, policies not yet applied
    WAITING = "waiting"  # manual conflicts pending a person
    READY = "ready"  # every conflict decided: the load may start
    LOADING = "loading"  # one launcher has begun the load
    DONE = "done"  # loaded and committed
    FAILED = "failed"  # an unexpected error ended it


class ReplicaStatus(StrEnum):
    """`sync_replica.status`."""

    OFFLINE = "offline"  # checked out, not yet synchronised
    SYNCING = "syncing"  # a session is open
    WAITING = "waiting"  # its session waits for a person
    RETIRED = "retired"  # synchronised: the master refuses it from now on
    FAILED = "failed"  # its session failed


class ConflictStatus(StrEnum):
    """`sync_conflict.status`."""

    PENDING = "pending"
    DECIDED = "decided"


MANUAL = "manual"  # the policy that leaves a conflict to a person

S, R = SessionStatus, ReplicaStatus

# Sessions a replica may still continue (one at a time); a closed one is history.
OPEN_STATUSES: tuple[SessionStatus, ...] = (S.EXTRACTED, S.DETECTED, S.WAITING, S.READY, S.LOADING)
CLOSED_STATUSES: tuple[SessionStatus, ...] = (S.DONE, S.FAILED)
# Decisions may still change: the load has not started.
DECIDABLE_STATUSES: tuple[SessionStatus, ...] = (S.DETECTED, S.WAITING, S.READY)

# The moves a session makes. Redetection (the master moved since detection) sends a session back to
# `detected` from any open step; an unexpected error ends any open one as `failed`; closed is final.
SESSION_MOVES: dict[SessionStatus, frozenset[SessionStatus]] = {
    S.EXTRACTED: frozenset({S.DETECTED, S.FAILED}),
    S.DETECTED: frozenset({S.DETECTED, S.WAITING, S.READY, S.FAILED}),
    S.WAITING: frozenset({S.WAITING, S.READY, S.DETECTED, S.FAILED}),
    S.READY: frozenset({S.READY, S.WAITING, S.LOADING, S.DETECTED, S.FAILED}),
    S.LOADING: frozenset({S.DONE, S.READY, S.DETECTED, S.FAILED}),
    S.DONE: frozenset(),
    S.FAILED: frozenset(),
}

# A replica is synchronised once: `retired` is final; a failed session leaves it to be synchronised again.
REPLICA_MOVES: dict[ReplicaStatus, frozenset[ReplicaStatus]] = {
    R.OFFLINE: frozenset({R.SYNCING, R.FAILED}),
    R.SYNCING: frozenset({R.SYNCING, R.WAITING, R.RETIRED, R.FAILED}),
    R.WAITING: frozenset({R.WAITING, R.SYNCING, R.RETIRED, R.FAILED}),
    R.FAILED: frozenset({R.SYNCING, R.FAILED}),
    R.RETIRED: frozenset(),
}


def may_move(moves: Mapping[Any, frozenset[Any]], old: str, new: str) -> bool:
    """Whether a status may go from `old` to `new` (values compare as their stored text)."""
    return new in moves.get(old, frozenset())


def set_session_status(conn: Connection, session_id: str, status: SessionStatus, **extra: Any) -> None:
    """Write a session's status (and any other columns of the same update)."""
    table = store.sync_session
    conn.execute(sa.update(table).where(table.c.session_id == session_id).values(status=str(status), **extra))


def set_replica_status(conn: Connection, replica_id: str, status: ReplicaStatus, **extra: Any) -> None:
    """Write a replica's status (and any other columns of the same update)."""
    table = store.sync_replica
    conn.execute(sa.update(table).where(table.c.replica_id == replica_id).values(status=str(status), **extra))


# ------------------------------------------------------------------------------------------------
# Decisions: the one reader of the history, the one rule of what is in force
# ------------------------------------------------------------------------------------------------


def decision_history(conn: Connection, conflict_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
    """Every decision of each conflict, oldest first (values decoded): the one reader of `sync_decision`."""
    out: dict[int, list[dict[str, Any]]] = {}
    ids = list(conflict_ids)
    table = store.sync_decision
    for start in range(0, len(ids), 500):
        found = conn.execute(
            sa.select(table).where(table.c.conflict_id.in_(ids[start : start + 500])).order_by(table.c.decision_id)
        ).mappings()
        for row in found:
            item = dict(row)
            item["value"] = loads(item["value"])
            out.setdefault(item["conflict_id"], []).append(item)
    return out


def decisions_in_force(history: Iterable[Mapping[str, Any]], names: Iterable[str]) -> dict[str, Mapping[str, Any]]:
    """Field -> the decision that decides it now: the latest one covering it (oldest-first `history`).

    A row decision (`field` None) covers every field of `names`; a later field decision replaces it for
    that field only. Works on stored rows and on the public JSON history alike (both carry `field`).
    """
    names = list(names)
    covering: dict[str, Mapping[str, Any]] = {}
    for entry in history:
        if entry["field"] is None:
            covering = dict.fromkeys(names, entry)
        else:
            covering[entry["field"]] = entry
    return covering


def row_decision_in_force(history: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The row decision in force: the latest decision, if it was for the whole row."""
    return history[-1] if history and history[-1]["field"] is None else None


def latest_decision_id(engine: Engine, conflict_id: int) -> int:
    """The id of the newest decision of a conflict (0: none): what a person saw when they looked."""
    d = store.sync_decision
    with engine.connect() as conn:
        latest = conn.execute(sa.select(sa.func.max(d.c.decision_id)).where(d.c.conflict_id == conflict_id)).scalar()
    return int(latest or 0)


# ------------------------------------------------------------------------------------------------
# Replicas
# ------------------------------------------------------------------------------------------------


def require_initialised(engine: Engine) -> None:
    """NotInitialisedError (with its fix) unless the master has current sync tables."""
    read_meta(engine)


def master_id(engine: Engine) -> str:
    return read_meta(engine).get("master_id", "unknown")


def replica_record(engine: Engine, replica_id: str) -> dict[str, Any] | None:
    """The master's record of a replica (`sync_replica` row), None if unknown."""
    table = store.sync_replica
    with engine.connect() as conn:
        row = conn.execute(sa.select(table).where(table.c.replica_id == replica_id)).mappings().first()
    return dict(row) if row else None


def replica_record_by_path(engine: Engine, path: str) -> dict[str, Any] | None:
    """The record of the replica last synchronised from this file path, None if none."""
    table = store.sync_replica
    with engine.connect() as conn:
        row = conn.execute(sa.select(table).where(table.c.path == str(path))).mappings().first()
    return dict(row) if row else None


def replica_keys(engine: Engine) -> list[tuple[str, str | None, ReplicaStatus]]:
    """(replica id, partition key or None, status) of every replica, in checkout order."""
    table = store.sync_replica
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(table.c.replica_id, table.c.partition_key, table.c.status).order_by(table.c.checked_out_at)
        ).all()
    return [(str(replica_id), key, ReplicaStatus(status)) for replica_id, key, status in rows]


def replica_owner_and_key(engine: Engine, replica_id: str) -> tuple[str, str | None] | None:
    """(owner, stored partition key) of a replica; None if the master does not know it."""
    table = store.sync_replica
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(table.c.owner, table.c.partition_key).where(table.c.replica_id == replica_id)
        ).first()
    return None if row is None else (str(row.owner), row.partition_key)


def claim_partition_key(engine: Engine, replica_id: str, key: str) -> bool | None:
    """Store `key` as the replica's partition key if it has none. True: stored; False: the replica has a key
    already (a concurrent caller named it); None: another replica holds `key` (try another)."""
    table = store.sync_replica
    try:
        with engine.begin() as conn:
            named = conn.execute(
                sa.update(table)
                .where(table.c.replica_id == replica_id, table.c.partition_key.is_(None))
                .values(partition_key=key)
            ).rowcount
    except IntegrityError:
        return None
    return bool(named)


def stored_partition_key(engine: Engine, replica_id: str) -> str | None:
    table = store.sync_replica
    with engine.connect() as conn:
        stored = conn.execute(sa.select(table.c.partition_key).where(table.c.replica_id == replica_id)).scalar()
    return str(stored) if stored else None


def replica_of_partition(engine: Engine, partition_key: str) -> str | None:
    """The replica a partition key names: its stored key, else (partitions from before named keys) its id."""
    table = store.sync_replica
    with engine.connect() as conn:
        found = conn.execute(sa.select(table.c.replica_id).where(table.c.partition_key == partition_key)).scalar()
        if found is None:
            found = conn.execute(sa.select(table.c.replica_id).where(table.c.replica_id == partition_key)).scalar()
    return str(found) if found is not None else None


# ------------------------------------------------------------------------------------------------
# Sessions
# ------------------------------------------------------------------------------------------------


def latest_session(engine: Engine, replica_id: str) -> dict[str, Any] | None:
    """The replica's newest session, whatever its status (a replica is synchronised once)."""
    table = store.sync_session
    with engine.connect() as conn:
        row = (
            conn.execute(sa.select(table).where(table.c.replica_id == replica_id).order_by(table.c.started_at.desc()))
            .mappings()
            .first()
        )
    return dict(row) if row else None


def decision_version(engine: Engine, session_id: str) -> int:
    """The session's decision version (grows with every decision; part of the load's run key)."""
    table = store.sync_session
    with engine.connect() as conn:
        return int(
            conn.execute(sa.select(table.c.decision_version).where(table.c.session_id == session_id)).scalar_one()
        )


def ready_sessions(engine: Engine) -> list[tuple[str, str, int]]:
    """(session id, replica id, decision version) of every session ready to load, oldest first."""
    table = store.sync_session
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(table.c.session_id, table.c.replica_id, table.c.decision_version)
            .where(table.c.status == str(SessionStatus.READY))
            .order_by(table.c.started_at)
        ).all()
    return [(str(s), str(r), int(v)) for s, r, v in rows]


def claim_apply(engine: Engine, session_id: str, decision_version: int, token: str) -> bool:
    """Store `token` as the session's apply claim for this decision version; True for the one caller that
    changed it (a second launcher with the same token finds it taken)."""
    table = store.sync_session
    with engine.begin() as conn:
        claimed = conn.execute(
            sa.update(table)
            .where(
                table.c.session_id == session_id,
                table.c.decision_version == decision_version,
                sa.or_(table.c.apply_claim.is_(None), table.c.apply_claim != token),
            )
            .values(apply_claim=token)
        ).rowcount
    return claimed == 1


# ------------------------------------------------------------------------------------------------
# Conflicts and the applied history
# ------------------------------------------------------------------------------------------------


def conflict_session(engine: Engine, conflict_id: int) -> str | None:
    """The session a conflict belongs to, None if there is no such conflict."""
    table = store.sync_conflict
    with engine.connect() as conn:
        found = conn.execute(sa.select(table.c.session_id).where(table.c.conflict_id == conflict_id)).scalar()
    return None if found is None else str(found)


def conflict_changes(engine: Engine, session_id: str) -> dict[int, int]:
    """Conflict id -> the change it came from, for one session."""
    table = store.sync_conflict
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(table.c.conflict_id, table.c.change_id).where(table.c.session_id == session_id)
        ).all()
    return {int(conflict): int(change) for conflict, change in rows}


def decided_conflict_rows(conn: Connection, session_id: str) -> list[Any]:
    """A session's decided conflicts, lean: (conflict_id, change_id, table_name, kind, fields)."""
    c = store.sync_conflict
    query = (
        sa.select(c.c.conflict_id, c.c.change_id, c.c.table_name, c.c.kind, c.c.fields)
        .where(c.c.session_id == session_id, c.c.status == ConflictStatus.DECIDED)
        .order_by(c.c.conflict_id)
    )
    return list(conn.execute(query).all())


def first_pending(engine: Engine, session_id: str) -> dict[str, int]:
    """The lowest pending conflict id per module of a session."""
    c = store.sync_conflict
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(c.c.module, sa.func.min(c.c.conflict_id))
            .where(c.c.session_id == session_id, c.c.status == str(ConflictStatus.PENDING))
            .group_by(c.c.module)
        ).all()
    return {module: int(conflict_id) for module, conflict_id in rows}


def conflicts_of_policies(engine: Engine, session_id: str, exclude: int | None = None) -> list[dict[str, Any]]:
    """The session's conflicts that a policy (not `manual`) decides, oldest first, in the public shape
    (`id, module, table, key, kind, policy, status`); `exclude` leaves one conflict out."""
    c = store.sync_conflict
    query = (
        sa.select(c.c.conflict_id, c.c.module, c.c.table_name, c.c.row_key, c.c.kind, c.c.policy, c.c.status)
        .where(c.c.session_id == session_id, c.c.policy != MANUAL, c.c.conflict_id != (exclude or 0))
        .order_by(c.c.conflict_id)
    )
    with engine.connect() as conn:
        return [
            {
                "id": row.conflict_id,
                "module": row.module,
                "table": row.table_name,
                "key": json.loads(row.row_key),
                "kind": row.kind,
                "policy": row.policy,
                "status": row.status,
            }
            for row in conn.execute(query)
        ]


def applied_after_latest(engine: Engine, session_id: str) -> list[tuple[str, str, Any]]:
    """(table, row key as stored, `after` decoded; None: deleted) of the last write of each row in a
    session's applied history, in the order of those rows' first writes: what a reconciliation compares
    with the master. Reads neither the `before` images nor the other columns, and decodes only the `after`
    that is compared, not those of earlier writes of the same row."""
    table = store.sync_applied
    latest: dict[tuple[str, str], str | None] = {}
    with engine.connect() as conn:
        found = conn.execute(
            sa.select(table.c.table_name, table.c.row_key, table.c.after)
            .where(table.c.session_id == session_id)
            .order_by(table.c.applied_id)
        )
        for table_name, row_key, after in found:
            latest[(table_name, row_key)] = after
    return [(table_name, row_key, loads(after)) for (table_name, row_key), after in latest.items()]


def applied_counts(engine: Engine, session_id: str) -> list[tuple[str, str, int]]:
    """(table, op, number of writes) of a session's applied history."""
    table = store.sync_applied
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(table.c.table_name, table.c.op, sa.func.count())
            .where(table.c.session_id == session_id)
            .group_by(table.c.table_name, table.c.op)
        ).all()
    return [(str(t), str(op), int(n)) for t, op, n in rows]


# ------------------------------------------------------------------------------------------------
# Sessions with their conflict counts (the review page's lists, `conflicts list`)
# ------------------------------------------------------------------------------------------------


@dataclass
class ModuleCounts:
    module: str
    pending: int = 0
    decided: int = 0  # manual conflicts with a decision in force
    automatic: int = 0  # conflicts a policy settled

    @property
    def manual(self) -> int:
        return self.pending + self.decided


@dataclass
class SessionSummary:
    session_id: str
    replica_id: str
    owner: str
    status: str
    started_at: str
    finished_at: str | None
    dagster_run_id: str | None
    decision_version: int
    replica_modules_json: str = "[]"
    modules: dict[str, ModuleCounts] = field(default_factory=dict)

    @property
    def replica_modules(self) -> list[str]:
        """Every module of the replica (the protocol covers them all, with or without conflicts)."""
        return list(json.loads(self.replica_modules_json))

    @property
    def pending(self) -> int:
        return sum(m.pending for m in self.modules.values())

    @property
    def decidable(self) -> bool:
        """Decisions may still change (the load has not started)."""
        return self.status in DECIDABLE_STATUSES


def session_summaries(
    engine: Engine, statuses: Iterable[str] | None = None, session_id: str | None = None
) -> list[SessionSummary]:
    """Sessions (those with one of `statuses`, or the one `session_id`) with their conflicts counted per
    module, oldest first."""
    s, r, c = store.sync_session, store.sync_replica, store.sync_conflict
    read_meta(engine)
    query = (
        sa.select(
            s.c.session_id,
            s.c.replica_id,
            r.c.owner,
            s.c.status,
            s.c.started_at,
            s.c.finished_at,
            s.c.dagster_run_id,
            s.c.decision_version,
            r.c.modules,
        )
        .join(r, r.c.replica_id == s.c.replica_id)
        .order_by(s.c.started_at)
    )
    if statuses is not None:
        query = query.where(s.c.status.in_([str(x) for x in statuses]))
    if session_id is not None:
        query = query.where(s.c.session_id == session_id)
    with engine.connect() as conn:
        summaries = {row.session_id: SessionSummary(*row) for row in conn.execute(query).all()}
        ids = list(summaries)
        for start in range(0, len(ids), 500):
            counts = conn.execute(
                sa.select(c.c.session_id, c.c.module, c.c.policy, c.c.status, sa.func.count())
                .where(c.c.session_id.in_(ids[start : start + 500]))
                .group_by(c.c.session_id, c.c.module, c.c.policy, c.c.status)
            )
            for sid, module, policy, status, count in counts:
                item = summaries[sid].modules.setdefault(module, ModuleCounts(module))
                if status == ConflictStatus.PENDING:
                    item.pending += count
                elif policy == MANUAL:
                    item.decided += count
                else:
                    item.automatic += count
    for summary in summaries.values():
        summary.modules = dict(sorted(summary.modules.items()))
    return list(summaries.values())
