"""Read-only views of the sync tables for people: conflicts, replicas and sessions, in the public JSON shape (§8).

Besides the compared fields, each conflict carries what a person needs to recognise the row and decide
(docs/review.md, "Context for a decision"): `identity` (the row's identifying fields: the table's
`display` setting, else its natural key and first text columns), `no_row` (the sides without a row), and
for a `duplicate` the master row it matched (`matched`: its key, the natural key it matched, the row).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine import records, store
from sync_pipeline.engine.conflict_records import ChangeRows, change_rows
from sync_pipeline.engine.errors import ConflictNotFoundError, SettingsError
from sync_pipeline.engine.records import MANUAL, SessionSummary
from sync_pipeline.engine.resolve import current_decision
from sync_pipeline.engine.settings import SyncSettings, parse_settings

# Without a `display` setting: the natural key, then text columns up to this many fields in all.
IDENTITY_FIELDS = 3


class _Identities:
    """Which columns identify a row of a table, per session's settings (cached: one reflection per table)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.settings: dict[str, SyncSettings | None] = {}
        self.text_columns: dict[str, list[str]] = {}
        self.inspector = sa.inspect(conn)

    def _settings(self, text: str | None) -> SyncSettings | None:
        if not text:
            return None
        if text not in self.settings:
            try:
                self.settings[text] = parse_settings(text, "<settings of the replica>")
            except SettingsError:  # stored settings that no longer parse: identify by text columns only
                self.settings[text] = None
        return self.settings[text]

    def _texts(self, table: str) -> list[str]:
        if table not in self.text_columns:
            try:
                columns = self.inspector.get_columns(table)
                pk = set(self.inspector.get_pk_constraint(table)["constrained_columns"])
            except sa.exc.NoSuchTableError:
                columns, pk = [], set()
            self.text_columns[table] = [
                c["name"] for c in columns if isinstance(c["type"], sa.String) and c["name"] not in pk
            ]
        return self.text_columns[table]

    def columns(self, settings_text: str | None, table: str) -> tuple[list[str], list[str]]:
        """(identifying columns, natural key columns) of a table."""
        settings = self._settings(settings_text)
        natural: list[str] = []
        if settings is not None:
            try:
                table_settings = settings.table(table)
            except KeyError:
                table_settings = None
            if table_settings is not None:
                if table_settings.display:
                    return list(table_settings.display), list(table_settings.natural_key or [])
                natural = list(table_settings.natural_key or [])
        chosen = list(natural)
        for name in self._texts(table):
            if len(chosen) >= IDENTITY_FIELDS:
                break
            if name not in chosen:
                chosen.append(name)
        return chosen, natural


def _identity(rows: ChangeRows | None, columns: Iterable[str]) -> dict[str, Any]:
    """The identifying fields' values: from the local row, else the master's, else the one at checkout."""
    if rows is None:
        return {}
    source = rows.local or rows.master or rows.base or {}
    return {name: source[name] for name in columns if name in source}


def _matched(rows: ChangeRows | None, natural: list[str]) -> dict[str, Any] | None:
    """A duplicate's master row: its key, the natural key both rows share, and the row itself."""
    if rows is None or rows.master is None:
        return None
    local = rows.local or {}
    return {
        "key": rows.target_key,
        "natural_key": {name: local.get(name) for name in natural},
        "row": rows.master,
    }


def list_conflicts(
    engine: Engine, session_id: str | None = None, status: str | None = None, conflict_id: int | None = None
) -> list[dict[str, Any]]:
    """Conflicts as `{id, session, module, table, key, kind, fields, status, decision, policy, identity,
    no_row, matched, …}`; `conflict_id` picks one."""
    store.read_meta(engine)
    c, s, r = store.sync_conflict, store.sync_session, store.sync_replica
    query = (
        sa.select(c, r.c.settings.label("replica_settings"))
        .join(s, s.c.session_id == c.c.session_id)
        .join(r, r.c.replica_id == s.c.replica_id)
        .order_by(c.c.conflict_id)
    )
    if session_id:
        query = query.where(c.c.session_id == session_id)
    if status:
        query = query.where(c.c.status == status)
    if conflict_id is not None:
        query = query.where(c.c.conflict_id == conflict_id)
    with engine.connect() as conn:
        conflicts = [dict(r) for r in conn.execute(query).mappings()]
        history = records.decision_history(conn, [x["conflict_id"] for x in conflicts])
        change_ids: dict[str, list[int]] = {}
        for x in conflicts:
            change_ids.setdefault(x["session_id"], []).append(x["change_id"])
        compared: dict[tuple[str, int], ChangeRows] = {}
        for session, ids_of_session in change_ids.items():
            for change_id, rows in change_rows(conn, session, ids_of_session).items():
                compared[(session, change_id)] = rows
        identities = _Identities(conn)
        columns = {
            (x["replica_settings"], x["table_name"]): identities.columns(x["replica_settings"], x["table_name"])
            for x in conflicts
        }
    out = []
    for conflict in conflicts:
        fields = json.loads(conflict["fields"])
        names = [f["name"] for f in fields]
        decisions = history.get(conflict["conflict_id"], [])
        current = current_decision(decisions, names)
        rows = compared.get((conflict["session_id"], conflict["change_id"]))
        shown, natural = columns[(conflict["replica_settings"], conflict["table_name"])]
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
                "identity": _identity(rows, shown),
                "no_row": rows.no_row if rows else [],
                "matched": _matched(rows, natural) if conflict["kind"] == "duplicate" else None,
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


def sessions_with_status(engine: Engine, statuses: Iterable[str]) -> list[SessionSummary]:
    return records.session_summaries(engine, statuses=statuses)


def session_summary(engine: Engine, session_id: str) -> SessionSummary:
    found = records.session_summaries(engine, session_id=session_id)
    if not found:
        raise ConflictNotFoundError(
            f"session {session_id} does not exist on this master", "pick a session from the list of sessions"
        )
    return found[0]


def session_conflicts(engine: Engine, session_id: str) -> list[dict[str, Any]]:
    """The conflicts a person reviews: those of `manual` modules and tables, in id order."""
    return [c for c in list_conflicts(engine, session_id) if c["policy"] == MANUAL]


def conflict_session(engine: Engine, conflict_id: int) -> str:
    session_id = records.conflict_session(engine, conflict_id)
    if session_id is None:
        raise ConflictNotFoundError(
            f"conflict {conflict_id} does not exist", "list conflicts with `sync-pipeline conflicts list`"
        )
    return session_id


def get_conflict(engine: Engine, conflict_id: int) -> dict[str, Any]:
    """One conflict in the public JSON shape (`conflicts list --json`), plus `latest_decision_id`."""
    records.require_initialised(engine)
    session_id = conflict_session(engine, conflict_id)
    for item in list_conflicts(engine, session_id, conflict_id=conflict_id):
        if item["id"] == conflict_id:
            item["latest_decision_id"] = records.latest_decision_id(engine, conflict_id)
            return item
    raise ConflictNotFoundError(f"conflict {conflict_id} does not exist", "list conflicts first")


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
    items: list[dict[str, Any]] = []
    total = 0
    for item in records.conflicts_of_policies(engine, session_id, exclude):
        if may_see is not None and not may_see(item["module"]):
            continue
        total += 1
        if len(items) < limit:
            items.append(item)
    return SettledConflicts(items, total)


def decision_context(engine: Engine, conflict: dict[str, Any], may_see: Callable[[str], bool]) -> dict[str, Any]:
    """What the conflict page shows around the compared fields: the conflicts policies settled in the same
    session."""
    return {"settled": settled_by_policy(engine, conflict["session"], may_see, exclude=conflict["id"])}
