"""Conflict records of the protocol and the conflict history: decisions folded, values kept, the master
row each conflict ends up in, and the sides that have no row.

"The value that went in" is read from what the load wrote (`sync_applied`), not re-derived from the
decision, so that a decided change the load still had to drop (e.g. a row other master rows still
reference) is reported as not written. Until the session is loaded, `kept` is the value its current
decision would write, and `loaded` is false.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync_pipeline.engine import records, store
from sync_pipeline.engine.protocol_model import (
    BATCH,
    OUTCOMES,
    ConflictRecord,
    DecisionRecord,
    DroppedRow,
    FieldOutcome,
    KeyRemap,
)
from sync_pipeline.engine.records import ConflictStatus, SessionStatus
from sync_pipeline.engine.resolve import CurrentDecision, current_decision

# ------------------------------------------------------------------------------------------------
# Reading conflicts (shared with the conflict history)
# ------------------------------------------------------------------------------------------------


def canonical_key(key: Mapping[str, Any]) -> str:
    """One text per key, whatever order its columns were written in."""
    return json.dumps(dict(key), sort_keys=True, ensure_ascii=False, default=str)


@dataclass
class SessionFacts:
    """What the conflict reader needs to know of a session."""

    session_id: str
    status: str
    summary: dict[str, Any]


class PrimaryKeys:
    """Primary-key column order per table, so that the summary's key lists can be read as dicts."""

    def __init__(self, conn: Connection) -> None:
        self.inspector = sa.inspect(conn)
        self.cache: dict[str, list[str]] = {}

    def of(self, table: str) -> list[str]:
        if table not in self.cache:
            try:
                self.cache[table] = list(self.inspector.get_pk_constraint(table)["constrained_columns"])
            except sa.exc.NoSuchTableError:
                # The table was dropped since: name the key parts by position rather than fail the report.
                self.cache[table] = []
        return self.cache[table]

    def ordered(self, table: str, key: Mapping[str, Any]) -> dict[str, Any]:
        """A key dict in the table's primary-key column order (stored keys are sorted by name)."""
        names = [n for n in self.of(table) if n in key]
        return {**{n: key[n] for n in names}, **{n: v for n, v in key.items() if n not in names}}

    def as_dict(self, table: str, values: list[Any]) -> dict[str, Any]:
        names = self.of(table)
        if len(names) != len(values):
            names = [f"key{index + 1}" for index in range(len(values))]
        return dict(zip(names, values, strict=True))


def remapped_keys(summary: Mapping[str, Any], pks: PrimaryKeys, duplicates: set[tuple[str, str]]) -> list[KeyRemap]:
    out = []
    for item in summary.get("remapped", []):
        local_key = pks.as_dict(item["table"], item["local_key"])
        reason = "duplicate" if (item["table"], canonical_key(local_key)) in duplicates else "key_taken"
        out.append(KeyRemap(item["table"], local_key, pks.as_dict(item["table"], item["master_key"]), reason))
    return out


def dropped_rows(summary: Mapping[str, Any], pks: PrimaryKeys) -> list[DroppedRow]:
    return [DroppedRow(d["table"], pks.as_dict(d["table"], d["key"]), d["reason"]) for d in summary.get("dropped", [])]


def _decision_history(conn: Connection, conflict_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    return defaultdict(list, records.decision_history(conn, conflict_ids))


@dataclass
class ChangeRows:
    """The rows detection compared for one change: at checkout, on the replica, on the master (None: no row)."""

    base: dict[str, Any] | None
    local: dict[str, Any] | None
    master: dict[str, Any] | None
    target_key: dict[str, Any] | None  # the master's row of a duplicate

    @property
    def no_row(self) -> list[str]:
        """The sides (base, local, master) that have no row."""
        return [
            name for name, row in (("base", self.base), ("local", self.local), ("master", self.master)) if row is None
        ]


def change_rows(conn: Connection, session_id: str, change_ids: Iterable[int]) -> dict[int, ChangeRows]:
    """The compared rows of some changes of a session, by change id (stored as JSON in `sync_change`)."""
    c = store.sync_change
    wanted = sorted(set(change_ids))
    out: dict[int, ChangeRows] = {}
    for start in range(0, len(wanted), BATCH):
        rows = conn.execute(
            sa.select(c.c.change_id, c.c.base, c.c.local, c.c.master, c.c.target_key).where(
                c.c.session_id == session_id, c.c.change_id.in_(wanted[start : start + BATCH])
            )
        )
        for change_id, base, local, master, target in rows:
            out[change_id] = ChangeRows(store.loads(base), store.loads(local), store.loads(master), store.loads(target))
    return out


def _applied_rows(
    conn: Connection, session_id: str, tables: Iterable[str]
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """What the load wrote for conflicts (and remapped rows) of a session, by (table, key)."""
    a = store.sync_applied
    out: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    query = (
        sa.select(a.c.table_name, a.c.row_key, a.c.op, a.c.after, a.c.source)
        .where(
            a.c.session_id == session_id,
            a.c.table_name.in_(sorted(set(tables))),
            # Plain changes never touch a conflict's row; leaving them out keeps this O(conflicts).
            a.c.source != "change",
        )
        .order_by(a.c.applied_id)
    )
    for row in conn.execute(query).mappings():
        key = canonical_key(json.loads(row["row_key"]))
        out[(row["table_name"], key)].append(
            {"op": row["op"], "after": store.loads(row["after"]), "source": row["source"]}
        )
    return out


def _take_of(status: str, kind_fields: list[str], current: CurrentDecision) -> str | None:
    if status != ConflictStatus.DECIDED:
        return None
    if current.row is not None:
        return current.row
    choices = {current.fields[n].choice for n in kind_fields if n in current.fields}
    if len(choices) == 1:
        return choices.pop()
    return "mixed" if choices else None


def read_conflicts(
    conn: Connection, conflict_rows: list[dict[str, Any]], sessions: Mapping[str, SessionFacts]
) -> list[ConflictRecord]:
    """Conflict records (decisions folded, values kept) for rows of `sync_conflict`, in the given order."""
    history = _decision_history(conn, [c["conflict_id"] for c in conflict_rows])
    pks = PrimaryKeys(conn)
    by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in conflict_rows:
        by_session[row["session_id"]].append(row)
    compared: dict[tuple[str, int], ChangeRows] = {}
    applied: dict[str, dict[tuple[str, str], list[dict[str, Any]]]] = {}
    remaps: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    dropped: dict[str, dict[tuple[str, str], str]] = {}
    for session_id, rows in by_session.items():
        for change_id, found in change_rows(conn, session_id, [r["change_id"] for r in rows]).items():
            compared[(session_id, change_id)] = found
        facts = sessions[session_id]
        if facts.status == SessionStatus.DONE:
            applied[session_id] = _applied_rows(conn, session_id, {r["table_name"] for r in rows})
            remaps[session_id] = {
                (r.table, canonical_key(r.local_key)): r.master_key for r in remapped_keys(facts.summary, pks, set())
            }
            dropped[session_id] = {(d.table, canonical_key(d.key)): d.reason for d in dropped_rows(facts.summary, pks)}
    out = []
    for row in conflict_rows:
        session_id = row["session_id"]
        facts = sessions[session_id]
        loaded = facts.status == SessionStatus.DONE
        key = json.loads(row["row_key"])
        raw_fields = json.loads(row["fields"])
        names = [f["name"] for f in raw_fields]
        decisions = history.get(row["conflict_id"], [])
        current = current_decision(decisions, names)
        covering = records.decisions_in_force(decisions, names)
        take = _take_of(row["status"], names, current)
        rows_of = compared.get((session_id, row["change_id"]))
        # The master row this conflict ends up in: a remapped local key (the load's key map, which also
        # maps a duplicate to the master's record), else detection's target, else the key itself.
        master_key = (
            remaps.get(session_id, {}).get((row["table_name"], canonical_key(key)))
            or (rows_of.target_key if rows_of else None)
            or key
        )
        writes = applied.get(session_id, {}).get((row["table_name"], canonical_key(master_key)), [])
        last_write = writes[-1] if writes else None
        no_row = rows_of.no_row if rows_of else []
        if loaded:
            kept_absent = "master" in no_row if last_write is None else last_write["op"] == "delete"
        else:
            kept_absent = take in no_row  # the decision takes a side that has no row
        if kept_absent:
            no_row = [*no_row, "kept"]
        fields = []
        for raw in raw_fields:
            chosen = current.fields.get(raw["name"])
            decided_by_row = covering.get(raw["name"])
            if loaded:
                if last_write is None:
                    kept = raw["master"]  # nothing written: the master's value (None: no row) stays
                elif last_write["op"] == "delete":
                    kept = None
                else:
                    kept = (last_write["after"] or {}).get(raw["name"], raw["master"])
            elif chosen is None:
                kept = None
            else:
                kept = {"local": raw["local"], "master": raw["master"]}.get(chosen.choice, chosen.value)
            fields.append(
                FieldOutcome(
                    name=raw["name"],
                    base=raw["base"],
                    local=raw["local"],
                    master=raw["master"],
                    take=chosen.choice if chosen else None,
                    kept=kept,
                    rule=decided_by_row["rule"] if decided_by_row else None,
                    decided_by=decided_by_row["decided_by"] if decided_by_row else None,
                    decided_at=decided_by_row["decided_at"] if decided_by_row else None,
                )
            )
        last = decisions[-1] if decisions else None
        out.append(
            ConflictRecord(
                id=row["conflict_id"],
                session=session_id,
                module=row["module"],
                table=row["table_name"],
                key=pks.ordered(row["table_name"], key),
                master_key=(
                    pks.ordered(row["table_name"], master_key)
                    if canonical_key(master_key) != canonical_key(key)
                    else None
                ),
                kind=row["kind"],
                policy=row["policy"],
                status=row["status"],
                take=take,
                outcome=_outcome(
                    row["kind"],
                    take,
                    loaded,
                    last_write,
                    dropped.get(session_id, {}).get((row["table_name"], canonical_key(key))),
                ),
                loaded=loaded,
                rule=last["rule"] if last else None,
                decided_by=last["decided_by"] if last else None,
                decided_at=last["decided_at"] if last else None,
                created_at=row["created_at"],
                fields=fields,
                history=[
                    DecisionRecord(d["field"], d["choice"], d["value"], d["rule"], d["decided_by"], d["decided_at"])
                    for d in decisions
                ],
                detail=json.loads(row["detail"] or "{}"),
                no_row=no_row,
            )
        )
    return out


def _outcome(kind: str, take: str | None, loaded: bool, last_write: dict[str, Any] | None, dropped: str | None) -> str:
    if take is None:
        return "pending: waits for a person's decision"
    sentence = OUTCOMES.get(kind, {}).get(take) or OUTCOMES.get(kind, {}).get("mixed") or f"take {take}"
    if not loaded:
        return f"decided ({take}), not loaded yet: {sentence}"
    if dropped is not None and last_write is None and take != "master":
        # The decision asked for a write the load could not make safely.
        return f"not written: {dropped}"
    return sentence
