"""Read-only views of the sync tables for people: conflicts and replicas, in the public JSON shape (§8)."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync_pipeline.engine import store
from sync_pipeline.engine.resolve import current_decision


def list_conflicts(engine: Engine, session_id: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
    """Conflicts as `{id, session, module, table, key, kind, fields, status, decision, policy}`."""
    store.read_meta(engine)
    c = store.sync_conflict
    query = sa.select(c).order_by(c.c.conflict_id)
    if session_id:
        query = query.where(c.c.session_id == session_id)
    if status:
        query = query.where(c.c.status == status)
    with engine.connect() as conn:
        conflicts = [dict(r) for r in conn.execute(query).mappings()]
        history: dict[int, list[dict[str, Any]]] = {}
        ids = [x["conflict_id"] for x in conflicts]
        for start in range(0, len(ids), 500):
            rows = conn.execute(
                sa.select(store.sync_decision)
                .where(store.sync_decision.c.conflict_id.in_(ids[start : start + 500]))
                .order_by(store.sync_decision.c.decision_id)
            ).mappings()
            for row in rows:
                item = dict(row)
                item["value"] = store.loads(item["value"])
                history.setdefault(item["conflict_id"], []).append(item)
    out = []
    for conflict in conflicts:
        fields = json.loads(conflict["fields"])
        names = [f["name"] for f in fields]
        decisions = history.get(conflict["conflict_id"], [])
        current = current_decision(decisions, names)
        decision = None
        if decisions:
            last = decisions[-1]
            decision = {
                "row": current.row,
                "fields": {
                    n: {"take": ch.choice, **({"value": ch.value} if ch.choice == "value" else {})}
                    for n, ch in current.fields.items()
                },
                "rule": last["rule"],
                "by": last["decided_by"],
                "at": last["decided_at"],
                "history": [
                    {
                        "field": d["field"],
                        "take": d["choice"],
                        "value": d["value"],
                        "rule": d["rule"],
                        "by": d["decided_by"],
                        "at": d["decided_at"],
                    }
                    for d in decisions
                ],
            }
        out.append(
            {
                "id": conflict["conflict_id"],
                "session": conflict["session_id"],
                "module": conflict["module"],
                "table": conflict["table_name"],
                "key": json.loads(conflict["row_key"]),
                "kind": conflict["kind"],
                "fields": fields,
                "status": conflict["status"],
                "policy": conflict["policy"],
                "decision": decision,
                "detail": json.loads(conflict["detail"] or "{}"),
                "created_at": conflict["created_at"],
            }
        )
    return out


def list_replicas(engine: Engine) -> list[dict[str, Any]]:
    """Every replica: owner, modules, checkout time, status, and its latest session."""
    store.read_meta(engine)
    r, s = store.sync_replica, store.sync_session
    with engine.connect() as conn:
        replicas = [dict(x) for x in conn.execute(sa.select(r).order_by(r.c.checked_out_at)).mappings()]
        sessions: dict[str, dict[str, Any]] = {}
        for row in conn.execute(
            sa.select(s.c.replica_id, s.c.session_id, s.c.status, s.c.started_at).order_by(s.c.started_at)
        ).mappings():
            sessions[row["replica_id"]] = dict(row)
    return [
        {
            "replica_id": x["replica_id"],
            "owner": x["owner"],
            "modules": json.loads(x["modules"]),
            "checked_out_at": x["checked_out_at"],
            "status": x["status"],
            "retired_at": x["retired_at"],
            "path": x["path"],
            "session": sessions.get(x["replica_id"], {}).get("session_id"),
        }
        for x in replicas
    ]
