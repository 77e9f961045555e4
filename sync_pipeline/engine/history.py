"""The conflict history of the last days, across every session and replica of the master.

A conflict is in the window when it was detected or (last) decided within it: a conflict found eight
days ago and decided yesterday is part of what happened in the last week. Each entry is the protocol's
conflict record (local, master and kept value per field, the rule or person, when) plus the session,
replica and owner it belongs to.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync_pipeline.engine import store
from sync_pipeline.engine.protocol import ConflictRecord, SessionFacts, read_conflicts

DEFAULT_DAYS = 7


@dataclass
class HistoryEntry:
    time: str  # when it last happened: the latest decision, else the detection
    replica: str
    owner: str
    session_status: str
    conflict: ConflictRecord

    def as_json(self) -> dict[str, Any]:
        # Flat: the conflict's own fields (id, session, module, table, key, kind, fields, ...) plus where from.
        return {
            "time": self.time,
            "replica": self.replica,
            "owner": self.owner,
            "session_status": self.session_status,
            **asdict(self.conflict),
        }


def window_start(days: int, now: dt.datetime | None = None) -> str:
    """The oldest time in the window, in the sync tables' format (UTC ISO, compared as text)."""
    current = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    return (current - dt.timedelta(days=days)).isoformat(timespec="microseconds")


def conflict_history(engine: Engine, days: int = DEFAULT_DAYS, now: dt.datetime | None = None) -> list[HistoryEntry]:
    """Every conflict detected or decided in the last `days` days, newest first."""
    if days < 1:
        raise ValueError("the history window is at least one day")
    store.read_meta(engine)
    since = window_start(days, now)
    c, d, s, r = store.sync_conflict, store.sync_decision, store.sync_session, store.sync_replica
    decided_recently = sa.select(d.c.conflict_id).where(d.c.decided_at >= since)
    with engine.connect() as conn:
        conflict_rows = [
            dict(x)
            for x in conn.execute(
                sa.select(c)
                .where(sa.or_(c.c.created_at >= since, c.c.conflict_id.in_(decided_recently)))
                .order_by(c.c.conflict_id)
            ).mappings()
        ]
        session_ids = sorted({x["session_id"] for x in conflict_rows})
        sessions: dict[str, dict[str, Any]] = {}
        for start in range(0, len(session_ids), 500):
            for row in conn.execute(
                sa.select(s.c.session_id, s.c.status, s.c.summary, s.c.replica_id, r.c.owner)
                .join(r, r.c.replica_id == s.c.replica_id)
                .where(s.c.session_id.in_(session_ids[start : start + 500]))
            ).mappings():
                sessions[row["session_id"]] = dict(row)
        facts = {sid: SessionFacts(sid, x["status"], json.loads(x["summary"] or "{}")) for sid, x in sessions.items()}
        records = read_conflicts(conn, conflict_rows, facts)
    entries = [
        HistoryEntry(
            time=max(record.created_at, record.decided_at or ""),
            replica=sessions[record.session]["replica_id"],
            owner=sessions[record.session]["owner"],
            session_status=sessions[record.session]["status"],
            conflict=record,
        )
        for record in records
    ]
    entries.sort(key=lambda e: (e.time, e.conflict.id), reverse=True)
    return entries
