"""A session's state on the master: what every step needs, rebuilt from the sync tables.

A session goes extract -> detect -> resolve -> (wait) -> load -> retire, each step persisted in the
master's sync tables so that a session waiting for decisions, or whose process died, resumes. This
module holds the session's record (its context, statuses, counts, stored changes and conflicts) and the
one transition every step may take: `mark_failed`. The steps are `session_detect` (extract, detect),
`session_decide` (policies, people), `session_apply` (load); `run_driver` chains them.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine import store
from sync_pipeline.engine.detect import Detected, FieldDiff
from sync_pipeline.engine.errors import (
    ConflictNotFoundError,
)
from sync_pipeline.engine.extract import RowChange
from sync_pipeline.engine.progress import report
from sync_pipeline.engine.records import (
    OPEN_STATUSES,
    ConflictStatus,
    ReplicaStatus,
    SessionStatus,
    decision_history,
    set_replica_status,
    set_session_status,
)
from sync_pipeline.engine.replica import (
    unfreeze_file,
)
from sync_pipeline.engine.schema import TableInfo, decode_row, dumps, dumps_plain, encode, normalize, reflect_tables
from sync_pipeline.engine.settings import SyncSettings, parse_settings


@dataclass
class SyncResult:
    session_id: str | None
    replica_id: str
    status: str  # SessionStatus DONE | WAITING | FAILED, or "dry-run"
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


def last_session_of(engine: Engine, replica_id: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(store.sync_session.c.session_id)
            .where(store.sync_session.c.replica_id == replica_id, store.sync_session.c.status == SessionStatus.DONE)
            .order_by(store.sync_session.c.started_at.desc())
        ).scalar()


def record_replica_path(engine: Engine, replica_id: str, path: str) -> None:
    """Where the replica's file is now: it may have moved (e.g. into the inbox) since its session started."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(store.sync_replica).where(store.sync_replica.c.replica_id == replica_id).values(path=path)
        )


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


def change_record(session_id: str, change_id: int, module: str, change: RowChange, info: TableInfo) -> dict[str, Any]:
    return {
        "session_id": session_id,
        "change_id": change_id,
        "module": module,
        "table_name": change.table,
        "row_key": dumps(change.key_dict(info.pk)),
        "op": change.op,
        "base": None if change.base is None else dumps(change.base),
        "local": None if change.local is None else dumps(change.local),
        "changed": dumps_plain(change.changed),
        "local_times": dumps_plain(change.times),
    }


def change_from_record(record: dict[str, Any], info: TableInfo) -> RowChange:
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


def insert_in_chunks(
    conn: Connection, table: sa.Table, rows: Iterable[dict[str, Any]], stage: str = "store", total: int | None = None
) -> None:
    store.insert_rows(conn, table, rows, lambda done, total: report(stage, done, total), total)


def load_changes(engine: Engine, ctx: SessionContext, change_ids: list[int] | None = None) -> list[dict[str, Any]]:
    query = sa.select(store.sync_change).where(store.sync_change.c.session_id == ctx.session_id)
    if change_ids is not None:
        query = query.where(store.sync_change.c.change_id.in_(change_ids))
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query.order_by(store.sync_change.c.change_id)).mappings()]


def encode_fields(fields: list[FieldDiff]) -> str:
    return dumps(
        [{"name": f.name, "base": encode(f.base), "local": encode(f.local), "master": encode(f.master)} for f in fields]
    )


def decode_fields(text: str, info: TableInfo) -> list[FieldDiff]:
    out = []
    for item in json.loads(text):
        column = info.table.columns[item["name"]]
        out.append(FieldDiff(item["name"], *(normalize(item[s], column) for s in ("base", "local", "master"))))
    return out


def detected_from(record: dict[str, Any], conflict: dict[str, Any] | None, ctx: SessionContext) -> Detected:
    info = ctx.infos[record["table_name"]]
    change = change_from_record(record, info)
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
        d.fields = decode_fields(conflict["fields"], info)
        d.detail = json.loads(conflict["detail"] or "{}")
        parent = d.detail.get("parent_row")
        if parent is not None:
            d.detail["parent_row"] = decode_row(parent, ctx.infos[d.detail["parent_table"]].table)
    return d


def conflicts_of(conn: Connection, session_id: str, **filters: Any) -> list[dict[str, Any]]:
    query = sa.select(store.sync_conflict).where(store.sync_conflict.c.session_id == session_id)
    for name, value in filters.items():
        query = query.where(store.sync_conflict.c[name] == value)
    return [dict(r) for r in conn.execute(query.order_by(store.sync_conflict.c.conflict_id)).mappings()]


def decisions_of(conn: Connection, conflict_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    return defaultdict(list, decision_history(conn, conflict_ids))


def pending_per_module(conn: Connection, session_id: str) -> dict[str, int]:
    rows = conn.execute(
        sa.select(store.sync_conflict.c.module, sa.func.count())
        .where(store.sync_conflict.c.session_id == session_id, store.sync_conflict.c.status == ConflictStatus.PENDING)
        .group_by(store.sync_conflict.c.module)
    )
    return {module: count for module, count in rows}


def mark_failed(engine: Engine, session_id: str, replica_id: str, error: str) -> None:
    """The session is abandoned; the replica is unfrozen so that its owner can correct it and sync again
    (a new session reads the whole change log once more)."""
    with engine.begin() as conn:
        status = conn.execute(
            sa.select(store.sync_session.c.status).where(store.sync_session.c.session_id == session_id)
        ).scalar()
        if status == SessionStatus.DONE:
            return  # the load committed: what failed after it (retiring the file, a report) cannot undo that
        set_session_status(conn, session_id, SessionStatus.FAILED, finished_at=store.now_iso(), error=error[:4000])
        set_replica_status(conn, replica_id, ReplicaStatus.FAILED)
        path = conn.execute(
            sa.select(store.sync_replica.c.path).where(store.sync_replica.c.replica_id == replica_id)
        ).scalar()
    if path:
        unfreeze_file(path)


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
        for conflict in conflicts_of(conn, session_id):
            counts[conflict["module"]][conflict["kind"]] += 1
            counts[conflict["module"]]["conflicts"] += 1
        return {m: dict(c) for m, c in counts.items()}


def pending_of(engine: Engine, session_id: str) -> dict[str, int]:
    with engine.connect() as conn:
        return pending_per_module(conn, session_id)
