"""The sync protocol as data: one model of a session, built from the master's sync tables only.

The renderers in `sync_pipeline.reports` (JSON, Markdown, HTML, PDF) all read this model, so that
every format says the same thing. The model's field names are the protocol's JSON field names
(documented in docs/protocol.md): renaming one is a breaking change of the public format.

"The value that went in" is read from what the load wrote (`sync_applied`), not re-derived from the
decision, so that a decided change the load still had to drop (e.g. a row other master rows still
reference) is reported as not written. Until the session is loaded, `kept` is the value its current
decision would write, and `loaded` is false.
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine import store
from sync_pipeline.engine.errors import ConflictNotFoundError, SettingsError
from sync_pipeline.engine.faults import checkpoint
from sync_pipeline.engine.resolve import CurrentDecision, current_decision
from sync_pipeline.engine.session import OPEN_STATUSES
from sync_pipeline.settings import SyncSettings, parse_settings

PROTOCOL_VERSION = 1
KIND_ORDER = ("update_update", "update_delete", "delete_update", "insert_insert", "duplicate", "orphan")
BATCH = 500

# What a decision means for the master row (DESIGN §5), said the way the protocol's reader needs it.
OUTCOMES: dict[str, dict[str, str]] = {
    "update_update": {
        "master": "the master's values stay",
        "local": "the local values were written",
        "value": "an edited value was written",
        "mixed": "decided field by field (see each field)",
    },
    "update_delete": {
        "master": "the row stays deleted, as on the master",
        "local": "the row was re-inserted: base values plus the local changes",
    },
    "delete_update": {
        "master": "the row stays, with the master's values",
        "local": "the row was deleted, as on the replica",
    },
    "insert_insert": {
        "master": "the master's row stays; the local insert was dropped",
        "local": "the master's row was overwritten with the local row",
        "mixed": "the master's row got the local value of each field taken from local",
    },
    "duplicate": {
        "master": "the local row is the master's row: the local insert was dropped and references point at it",
        "local": "the local values were written into the master's row (the same record)",
        "mixed": "the master's row (the same record) got the local value of each field taken from local",
    },
    "orphan": {
        "master": "the local row was dropped: its parent is deleted on the master",
        "local": "the parent was re-created from the master's tombstone of it (its values when the master "
        "deleted it), then the local row written",
    },
}


# ------------------------------------------------------------------------------------------------
# The model (field names = JSON names)
# ------------------------------------------------------------------------------------------------


@dataclass
class FieldOutcome:
    """One compared field of a conflict: the three versions, what was taken and what the master holds."""

    name: str
    base: Any
    local: Any
    master: Any
    take: str | None  # local | master | value; None while undecided
    kept: Any  # loaded: the value in the master after the load (None: no row); else what the decision would write
    rule: str | None  # the policy that decided this field, or 'person'
    decided_by: str | None
    decided_at: str | None


@dataclass
class DecisionRecord:
    """One row of a conflict's decision history (oldest first)."""

    field: str | None  # None: the whole row
    take: str
    value: Any
    rule: str
    decided_by: str | None
    decided_at: str


@dataclass
class ConflictRecord:
    id: int
    session: str
    module: str
    table: str
    key: dict[str, Any]  # the row's key in the replica
    master_key: dict[str, Any] | None  # the master row it went to, when that key differs (duplicate, remap)
    kind: str
    policy: str
    status: str  # pending | decided
    take: str | None  # local | master | value | mixed; None while pending
    outcome: str
    loaded: bool
    rule: str | None  # of the latest decision: the policy, or 'person'
    decided_by: str | None
    decided_at: str | None
    created_at: str
    fields: list[FieldOutcome]
    history: list[DecisionRecord]
    detail: dict[str, Any]


@dataclass
class KeyRemap:
    table: str
    local_key: dict[str, Any]
    master_key: dict[str, Any]
    reason: str  # key_taken: the generated key was taken on the master | duplicate: the same record exists


@dataclass
class DroppedRow:
    table: str
    key: dict[str, Any]
    reason: str


@dataclass
class OpCounts:
    inserts: int = 0
    updates: int = 0
    deletes: int = 0

    def add(self, op: str, count: int = 1) -> None:
        setattr(self, f"{op}s", getattr(self, f"{op}s") + count)

    @property
    def total(self) -> int:
        return self.inserts + self.updates + self.deletes


@dataclass
class ModuleProtocol:
    name: str
    policy: str
    tables: dict[str, str]  # table -> the policy in force for it
    local_changes: OpCounts
    applied: OpCounts
    remapped: list[KeyRemap]
    dropped: list[DroppedRow]
    conflicts_total: int
    conflicts_pending: int
    conflicts_by_kind: dict[str, int]
    decisions_by_rule: dict[str, int]  # conflicts by the rule of their final decision ('person' for people)
    decisions_by_person: dict[str, int]  # conflicts by the person who took their final decision


@dataclass
class SessionHeader:
    id: str
    status: str  # extracted|detected|waiting|ready|loading|done|failed
    started_at: str
    finished_at: str | None
    duration_seconds: float | None
    dagster_run_id: str | None
    error: str | None


@dataclass
class ReplicaHeader:
    id: str
    owner: str
    modules: list[str]
    checked_out_at: str
    status: str
    retired_at: str | None
    path: str | None


@dataclass
class SettingsInForce:
    """The settings frozen into the replica at checkout: what decided this session."""

    yaml: str
    retention_days: int | None
    master_change_capture: bool | None
    modules: dict[str, dict[str, Any]]  # module -> {policy, tables: {table: policy}}


@dataclass
class Totals:
    local_changes: int
    inserts: int
    updates: int
    deletes: int
    conflicts: int
    pending: int
    remapped: int
    dropped: int


@dataclass
class Protocol:
    protocol_version: int
    generated_at: str
    state: str  # done | empty | waiting | in_progress | failed
    notice: str
    session: SessionHeader
    replica: ReplicaHeader
    settings: SettingsInForce
    deciders: dict[str, dict[str, int]]  # {"rules": {rule: n}, "people": {name: n}} over final decisions
    totals: Totals
    modules: list[ModuleProtocol]
    conflicts: list[ConflictRecord]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def conflicts_of(self, module: str) -> list[ConflictRecord]:
        return [c for c in self.conflicts if c.module == module]


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


class _PrimaryKeys:
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


def remapped_keys(summary: Mapping[str, Any], pks: _PrimaryKeys, duplicates: set[tuple[str, str]]) -> list[KeyRemap]:
    out = []
    for item in summary.get("remapped", []):
        local_key = pks.as_dict(item["table"], item["local_key"])
        reason = "duplicate" if (item["table"], canonical_key(local_key)) in duplicates else "key_taken"
        out.append(KeyRemap(item["table"], local_key, pks.as_dict(item["table"], item["master_key"]), reason))
    return out


def dropped_rows(summary: Mapping[str, Any], pks: _PrimaryKeys) -> list[DroppedRow]:
    return [DroppedRow(d["table"], pks.as_dict(d["table"], d["key"]), d["reason"]) for d in summary.get("dropped", [])]


def _decision_history(conn: Connection, conflict_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    d = store.sync_decision
    for start in range(0, len(conflict_ids), BATCH):
        rows = conn.execute(
            sa.select(d).where(d.c.conflict_id.in_(conflict_ids[start : start + BATCH])).order_by(d.c.decision_id)
        ).mappings()
        for row in rows:
            item = dict(row)
            item["value"] = store.loads(item["value"])
            out[item["conflict_id"]].append(item)
    return out


def _target_keys(conn: Connection, session_id: str, change_ids: list[int]) -> dict[int, dict[str, Any]]:
    """Where detection pointed a change (the master's row of a duplicate)."""
    c = store.sync_change
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(change_ids), BATCH):
        rows = conn.execute(
            sa.select(c.c.change_id, c.c.target_key).where(
                c.c.session_id == session_id,
                c.c.change_id.in_(change_ids[start : start + BATCH]),
                c.c.target_key.is_not(None),
            )
        )
        for change_id, target in rows:
            out[change_id] = json.loads(target)
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
    if status != "decided":
        return None
    if current.row is not None:
        return current.row
    choices = {current.fields[n].choice for n in kind_fields if n in current.fields}
    if len(choices) == 1:
        return choices.pop()
    return "mixed" if choices else None


def _covering_decisions(history: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    """The decision row that currently decides each field (the latest covering it), for attribution."""
    covering: dict[str, dict[str, Any]] = {}
    for row in history:
        if row["field"] is None:
            covering = {name: row for name in names}
        else:
            covering[row["field"]] = row
    return covering


def read_conflicts(
    conn: Connection, conflict_rows: list[dict[str, Any]], sessions: Mapping[str, SessionFacts]
) -> list[ConflictRecord]:
    """Conflict records (decisions folded, values kept) for rows of `sync_conflict`, in the given order."""
    history = _decision_history(conn, [c["conflict_id"] for c in conflict_rows])
    pks = _PrimaryKeys(conn)
    by_session: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in conflict_rows:
        by_session[row["session_id"]].append(row)
    targets: dict[tuple[str, int], dict[str, Any]] = {}
    applied: dict[str, dict[tuple[str, str], list[dict[str, Any]]]] = {}
    remaps: dict[str, dict[tuple[str, str], dict[str, Any]]] = {}
    dropped: dict[str, dict[tuple[str, str], str]] = {}
    for session_id, rows in by_session.items():
        for change_id, target in _target_keys(conn, session_id, [r["change_id"] for r in rows]).items():
            targets[(session_id, change_id)] = target
        facts = sessions[session_id]
        if facts.status == "done":
            applied[session_id] = _applied_rows(conn, session_id, {r["table_name"] for r in rows})
            remaps[session_id] = {
                (r.table, canonical_key(r.local_key)): r.master_key for r in remapped_keys(facts.summary, pks, set())
            }
            dropped[session_id] = {(d.table, canonical_key(d.key)): d.reason for d in dropped_rows(facts.summary, pks)}
    out = []
    for row in conflict_rows:
        session_id = row["session_id"]
        facts = sessions[session_id]
        loaded = facts.status == "done"
        key = json.loads(row["row_key"])
        raw_fields = json.loads(row["fields"])
        names = [f["name"] for f in raw_fields]
        decisions = history.get(row["conflict_id"], [])
        current = current_decision(decisions, names)
        covering = _covering_decisions(decisions, names)
        take = _take_of(row["status"], names, current)
        # The master row this conflict ends up in: a remapped local key (the load's key map, which also
        # maps a duplicate to the master's record), else detection's target, else the key itself.
        master_key = (
            remaps.get(session_id, {}).get((row["table_name"], canonical_key(key)))
            or targets.get((session_id, row["change_id"]))
            or key
        )
        writes = applied.get(session_id, {}).get((row["table_name"], canonical_key(master_key)), [])
        last_write = writes[-1] if writes else None
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


# ------------------------------------------------------------------------------------------------
# The protocol of one session
# ------------------------------------------------------------------------------------------------


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        return round((dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds(), 3)
    except ValueError:
        return None


def _settings_in_force(text: str, session_id: str) -> tuple[SettingsInForce, SyncSettings | None]:
    try:
        settings = parse_settings(text, f"<settings of session {session_id}>")
    except SettingsError:
        # A protocol must still print when stored settings no longer parse (e.g. after an upgrade).
        return SettingsInForce(text, None, None, {}), None
    modules = {
        name: {"policy": module.policy, "tables": {t: settings.policy_for(t) for t in module.tables}}
        for name, module in settings.modules.items()
    }
    return SettingsInForce(text, settings.retention_days, settings.master_change_capture, modules), settings


def _module_of(settings: SyncSettings | None, table: str, fallback: str = "?") -> str:
    if settings is None:
        return fallback
    try:
        return settings.module_of(table)
    except KeyError:
        return fallback


def _state_and_notice(
    session: Mapping[str, Any], changes: int, applied: int, pending: Mapping[str, int]
) -> tuple[str, str]:
    status = session["status"]
    if status == "failed":
        error = (session["error"] or "no error was recorded").strip().splitlines()[0]
        if applied:
            return "failed", f"The sync failed: {error}. Rows listed below were written before the failure."
        return (
            "failed",
            f"The sync failed: {error}. Nothing of this session was written to the master "
            "(the load is one transaction, and it was rolled back). The replica can be synchronised again "
            "once the cause is fixed.",
        )
    if status == "waiting":
        count = sum(pending.values())
        per_module = ", ".join(f"{m}: {n}" for m, n in sorted(pending.items()))
        return (
            "waiting",
            f"This session waits for {count} manual decision(s) ({per_module}). "
            "Nothing has been written to the master yet.",
        )
    if status in OPEN_STATUSES:
        return (
            "in_progress",
            f"This session is still running (step: {status}). Nothing has been written to the master yet.",
        )
    if applied == 0:
        if changes == 0:
            return "empty", "This session synchronised nothing: the replica had no local changes. It is retired."
        return (
            "empty",
            f"This session wrote nothing to the master: its {changes} local change(s) were already in the "
            "master, or every conflict kept the master's side. The replica is retired.",
        )
    return "done", f"{applied} row(s) were written to the master in one transaction. The replica is retired."


def build_protocol(engine: Engine, session_id: str, now: str | None = None) -> Protocol:
    """The protocol of one session, read from the master's sync tables."""
    store.read_meta(engine)
    s, r = store.sync_session, store.sync_replica
    with engine.connect() as conn:
        session = (
            conn.execute(
                sa.select(
                    s,
                    r.c.owner,
                    r.c.modules.label("replica_modules"),
                    r.c.checked_out_at,
                    r.c.status.label("replica_status"),
                    r.c.retired_at,
                    r.c.path,
                    r.c.settings,
                )
                .join(r, r.c.replica_id == s.c.replica_id)
                .where(s.c.session_id == session_id)
            )
            .mappings()
            .first()
        )
        if session is None:
            raise ConflictNotFoundError(
                f"session {session_id} does not exist on this master",
                "find session ids with `sync-pipeline replicas --json` or `sync-pipeline history`",
            )
        settings_in_force, settings = _settings_in_force(session["settings"], session_id)
        summary = json.loads(session["summary"] or "{}")
        c = store.sync_change
        local_counts = conn.execute(
            sa.select(c.c.module, c.c.op, sa.func.count())
            .where(c.c.session_id == session_id)
            .group_by(c.c.module, c.c.op)
        ).all()
        a = store.sync_applied
        applied_counts = conn.execute(
            sa.select(a.c.table_name, a.c.op, sa.func.count())
            .where(a.c.session_id == session_id)
            .group_by(a.c.table_name, a.c.op)
        ).all()
        conflict_rows = [
            dict(x)
            for x in conn.execute(
                sa.select(store.sync_conflict)
                .where(store.sync_conflict.c.session_id == session_id)
                .order_by(store.sync_conflict.c.conflict_id)
            ).mappings()
        ]
        facts = SessionFacts(session_id, session["status"], summary)
        conflicts = read_conflicts(conn, conflict_rows, {session_id: facts})
        checkpoint("protocol")
        pks = _PrimaryKeys(conn)
        duplicates = {(x.table, canonical_key(x.key)) for x in conflicts if x.kind == "duplicate"}
        remapped = remapped_keys(summary, pks, duplicates)
        dropped = dropped_rows(summary, pks)

    replica_modules: list[str] = json.loads(session["replica_modules"])
    module_names = list(dict.fromkeys([*replica_modules, *(x.module for x in conflicts)]))
    local_by_module: dict[str, OpCounts] = defaultdict(OpCounts)
    for module, op, count in local_counts:
        local_by_module[module].add(op, count)
        if module not in module_names:
            module_names.append(module)
    applied_by_module: dict[str, OpCounts] = defaultdict(OpCounts)
    for table, op, count in applied_counts:
        module = _module_of(settings, table)
        applied_by_module[module].add(op, count)
        if module not in module_names:
            module_names.append(module)

    modules = []
    rules_total: Counter[str] = Counter()
    people_total: Counter[str] = Counter()
    pending_by_module: dict[str, int] = {}
    for name in module_names:
        own = [x for x in conflicts if x.module == name]
        decided = [x for x in own if x.status == "decided" and x.rule]
        by_rule = Counter(x.rule for x in decided if x.rule)
        by_person = Counter(x.decided_by for x in decided if x.rule == "person" and x.decided_by)
        rules_total.update(by_rule)
        people_total.update(by_person)
        pending = sum(1 for x in own if x.status == "pending")
        if pending:
            pending_by_module[name] = pending
        module_settings = settings_in_force.modules.get(name, {})
        modules.append(
            ModuleProtocol(
                name=name,
                policy=module_settings.get("policy", "?"),
                tables=dict(module_settings.get("tables", {})),
                local_changes=local_by_module[name],
                applied=applied_by_module[name],
                remapped=[k for k in remapped if _module_of(settings, k.table) == name],
                dropped=[d for d in dropped if _module_of(settings, d.table) == name],
                conflicts_total=len(own),
                conflicts_pending=pending,
                conflicts_by_kind={k: n for k in KIND_ORDER if (n := sum(1 for x in own if x.kind == k))},
                decisions_by_rule=dict(sorted(by_rule.items())),
                decisions_by_person=dict(sorted(by_person.items())),
            )
        )

    applied_total = sum(m.applied.total for m in modules)
    changes_total = sum(m.local_changes.total for m in modules)
    state, notice = _state_and_notice(session, changes_total, applied_total, pending_by_module)
    return Protocol(
        protocol_version=PROTOCOL_VERSION,
        generated_at=now or store.now_iso(),
        state=state,
        notice=notice,
        session=SessionHeader(
            id=session_id,
            status=session["status"],
            started_at=session["started_at"],
            finished_at=session["finished_at"],
            duration_seconds=_seconds_between(session["started_at"], session["finished_at"]),
            dagster_run_id=session["dagster_run_id"],
            error=session["error"],
        ),
        replica=ReplicaHeader(
            id=session["replica_id"],
            owner=session["owner"],
            modules=replica_modules,
            checked_out_at=session["checked_out_at"],
            status=session["replica_status"],
            retired_at=session["retired_at"],
            path=session["path"],
        ),
        settings=settings_in_force,
        deciders={"rules": dict(sorted(rules_total.items())), "people": dict(sorted(people_total.items()))},
        totals=Totals(
            local_changes=changes_total,
            inserts=sum(m.applied.inserts for m in modules),
            updates=sum(m.applied.updates for m in modules),
            deletes=sum(m.applied.deletes for m in modules),
            conflicts=len(conflicts),
            pending=sum(pending_by_module.values()),
            remapped=len(remapped),
            dropped=len(dropped),
        ),
        modules=modules,
        conflicts=conflicts,
    )
