"""What the review page and `sync-pipeline conflicts` both need: read views of sessions and conflicts
and the rules around deciding (who decided what is in force, what each choice means).

Both shells call these, so the page and the CLI cannot drift apart. Everything here reads; decisions
are written by `engine.session.decide` / `decide_module` only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync_pipeline.engine import store
from sync_pipeline.engine.column_types import type_text
from sync_pipeline.engine.errors import ConflictNotFoundError, DecisionError
from sync_pipeline.engine.queries import list_conflicts
from sync_pipeline.engine.resolve import FIELD_KINDS, VALUE_KINDS
from sync_pipeline.engine.schema import reflect_tables
from sync_pipeline.engine.session import DECIDABLE_STATUSES
from sync_pipeline.reports import formatting

MANUAL = "manual"

# What a conflict kind means and what each side's choice does to the master (DESIGN §5), in the
# words the page and `conflicts show` use.
KIND_HELP: dict[str, dict[str, str]] = {
    "update_update": {
        "title": "Changed on both sides",
        "what": "The same field(s) changed locally and in the master since checkout.",
        "local": "write the local value",
        "master": "keep the master's value (the local changes of other fields still apply)",
    },
    "update_delete": {
        "title": "Changed locally, deleted in the master",
        "what": "The row was edited on the laptop while someone deleted it in the master.",
        "local": "re-insert the row: its values at checkout plus the local changes",
        "master": "the row stays deleted",
    },
    "delete_update": {
        "title": "Deleted locally, changed in the master",
        "what": "The row was deleted on the laptop while someone changed it in the master.",
        "local": "delete it in the master (with the rows the replica deleted along with it)",
        "master": "the row stays, with the master's values",
    },
    "insert_insert": {
        "title": "Inserted on both sides under the same key",
        "what": "The laptop and the master both created a row with this key.",
        "local": "overwrite the master's row with the local row",
        "master": "keep the master's row",
    },
    "duplicate": {
        "title": "New row that already exists in the master",
        "what": "The laptop created a row whose natural key the master already has.",
        "local": "use the master's row and write the local values into it",
        "master": "use the master's row as it is and drop the local insert",
    },
    "orphan": {
        "title": "New row whose parent the master deleted",
        "what": "The laptop created or re-pointed a row to a parent row that was deleted in the master.",
        "local": "re-create the parent from the master's record of it when deleted (its tombstone), "
        "then insert the row",
        "master": "drop the local row",
    },
}


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


def _summaries(engine: Engine, where: Any) -> list[SessionSummary]:
    s, r, c = store.sync_session, store.sync_replica, store.sync_conflict
    store.read_meta(engine)
    with engine.connect() as conn:
        rows = conn.execute(
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
            .where(where)
            .order_by(s.c.started_at)
        ).all()
        summaries = {row.session_id: SessionSummary(*row) for row in rows}
        ids = list(summaries)
        for start in range(0, len(ids), 500):
            counts = conn.execute(
                sa.select(c.c.session_id, c.c.module, c.c.policy, c.c.status, sa.func.count())
                .where(c.c.session_id.in_(ids[start : start + 500]))
                .group_by(c.c.session_id, c.c.module, c.c.policy, c.c.status)
            )
            for session_id, module, policy, status, count in counts:
                item = summaries[session_id].modules.setdefault(module, ModuleCounts(module))
                if status == "pending":
                    item.pending += count
                elif policy == MANUAL:
                    item.decided += count
                else:
                    item.automatic += count
    for summary in summaries.values():
        summary.modules = dict(sorted(summary.modules.items()))
    return list(summaries.values())


def sessions_with_status(engine: Engine, statuses: Iterable[str]) -> list[SessionSummary]:
    return _summaries(engine, store.sync_session.c.status.in_(list(statuses)))


def session_summary(engine: Engine, session_id: str) -> SessionSummary:
    found = _summaries(engine, store.sync_session.c.session_id == session_id)
    if not found:
        raise ConflictNotFoundError(
            f"session {session_id} does not exist on this master", "pick a session from the list of sessions"
        )
    return found[0]


def session_conflicts(engine: Engine, session_id: str) -> list[dict[str, Any]]:
    """The conflicts a person reviews: those of `manual` modules and tables, in id order."""
    return [c for c in list_conflicts(engine, session_id) if c["policy"] == MANUAL]


def conflict_session(engine: Engine, conflict_id: int) -> str:
    with engine.connect() as conn:
        session_id = conn.execute(
            sa.select(store.sync_conflict.c.session_id).where(store.sync_conflict.c.conflict_id == conflict_id)
        ).scalar()
    if session_id is None:
        raise ConflictNotFoundError(
            f"conflict {conflict_id} does not exist", "list conflicts with `sync-pipeline conflicts list`"
        )
    return str(session_id)


def get_conflict(engine: Engine, conflict_id: int) -> dict[str, Any]:
    """One conflict in the public JSON shape (`conflicts list --json`), plus `latest_decision_id`."""
    store.read_meta(engine)
    session_id = conflict_session(engine, conflict_id)
    for item in list_conflicts(engine, session_id, conflict_id=conflict_id):
        if item["id"] == conflict_id:
            item["latest_decision_id"] = latest_decision_id(engine, conflict_id)
            return item
    raise ConflictNotFoundError(f"conflict {conflict_id} does not exist", "list conflicts first")


def latest_decision_id(engine: Engine, conflict_id: int) -> int:
    """The id of the newest decision of a conflict (0: none): what a person saw when they looked."""
    d = store.sync_decision
    with engine.connect() as conn:
        latest = conn.execute(sa.select(sa.func.max(d.c.decision_id)).where(d.c.conflict_id == conflict_id)).scalar()
    return int(latest or 0)


def decider(entry: dict[str, Any]) -> str:
    """Who took a decision: the person, or the policy that decided by itself."""
    return entry.get("by") or f"policy {entry.get('rule')}"


def in_force(conflict: dict[str, Any], field_name: str | None = None) -> list[dict[str, Any]]:
    """The decision-history entries that count now for one field (or, with None, for the whole row).

    A row decision covers every field; a later field decision replaces it for that field only.
    """
    history = (conflict.get("decision") or {}).get("history") or []
    if not history:
        return []
    names = [f["name"] for f in conflict["fields"]]
    if conflict["kind"] not in FIELD_KINDS or not names:
        return [history[-1]]
    targets = [field_name] if field_name is not None else names
    entries: list[dict[str, Any]] = []
    for name in targets:
        covering = [h for h in history if h["field"] in (name, None)]
        if covering and covering[-1] not in entries:
            entries.append(covering[-1])
    return entries


def same_person(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.strip().casefold() == b.strip().casefold()


def decided_by_other(conflict: dict[str, Any], field_name: str | None, person: str) -> dict[str, Any] | None:
    """The newest decision in force for the target that someone else (a person or a policy) took."""
    others = [e for e in in_force(conflict, field_name) if not same_person(e.get("by"), person)]
    return max(others, key=lambda e: e["at"]) if others else None


class DecidedByOtherError(DecisionError):
    """The target of a decision carries someone else's decision, and the person did not say to replace it."""

    def __init__(self, problem: str, fix: str, by: str, at: str) -> None:
        self.by, self.at = by, at
        super().__init__(problem, fix)


def refuse_overwrite(conflict: dict[str, Any], field_name: str | None, person: str, how_to_change: str) -> None:
    """'already decided by X at T': a decision of someone else is never replaced without saying so."""
    other = decided_by_other(conflict, field_name, person)
    if other is not None:
        what = f"field {field_name} of conflict {conflict['id']}" if field_name else f"conflict {conflict['id']}"
        raise DecidedByOtherError(
            f"{what} was already decided by {decider(other)} at {other['at']} (take {other['take']})",
            how_to_change,
            decider(other),
            other["at"],
        )


@dataclass
class ColumnHint:
    type: str
    nullable: bool

    def text(self) -> str:
        return f"{self.type}{'' if self.nullable else ', required'}"


def column_hints(engine: Engine, table: str) -> dict[str, ColumnHint]:
    """Each column's type as the master declares it: shown next to a typed value's input."""
    info = reflect_tables(engine, [table])[table]
    hints = {}
    for column in info.table.columns:
        hints[column.name] = ColumnHint(type_text(column, engine.dialect), bool(column.nullable))
    return hints


def may_type_value(conflict: dict[str, Any]) -> bool:
    return conflict["kind"] in VALUE_KINDS


def per_field(conflict: dict[str, Any]) -> bool:
    return conflict["kind"] in FIELD_KINDS and bool(conflict["fields"])


def key_text(key: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v, ensure_ascii=False) if isinstance(v, str) else v}" for k, v in key.items())


# A session may have thousands of conflicts its policies settled; a conflict's page links the first ones.
SETTLED_SHOWN = 50


@dataclass
class SettledConflicts:
    """Conflicts of a session that a policy (not a person) settled: the context of a manual decision."""

    items: list[dict[str, Any]]
    total: int

    @property
    def more(self) -> int:
        return self.total - len(self.items)


def settled_by_policy(
    engine: Engine,
    session_id: str,
    may_see: Callable[[str], bool] | None = None,
    limit: int = SETTLED_SHOWN,
    exclude: int | None = None,
) -> SettledConflicts:
    """The session's conflicts of non-manual modules and tables (those a person may see, but `exclude`),
    oldest first."""
    c = store.sync_conflict
    query = (
        sa.select(c.c.conflict_id, c.c.module, c.c.table_name, c.c.row_key, c.c.kind, c.c.policy, c.c.status)
        .where(c.c.session_id == session_id, c.c.policy != MANUAL, c.c.conflict_id != (exclude or 0))
        .order_by(c.c.conflict_id)
    )
    items: list[dict[str, Any]] = []
    total = 0
    with engine.connect() as conn:
        for row in conn.execute(query):
            if may_see is not None and not may_see(row.module):
                continue
            total += 1
            if len(items) < limit:
                items.append(
                    {
                        "id": row.conflict_id,
                        "module": row.module,
                        "table": row.table_name,
                        "key": json.loads(row.row_key),
                        "kind": row.kind,
                        "policy": row.policy,
                        "status": row.status,
                    }
                )
    return SettledConflicts(items, total)


def decision_context(engine: Engine, conflict: dict[str, Any], may_see: Callable[[str], bool]) -> dict[str, Any]:
    """What the conflict page shows around the compared fields: the conflicts policies settled in the same
    session."""
    return {"settled": settled_by_policy(engine, conflict["session"], may_see, exclude=conflict["id"])}


def identity_text(conflict: dict[str, Any]) -> str:
    """The row's identifying fields in one line (`name=Ada Lovelace, email=ada@example.com`)."""
    return formatting.key(conflict.get("identity") or {}) if conflict.get("identity") else ""
