"""The sync protocol of one session, built from the master's sync tables only.

The renderers in `sync_pipeline.reports` (JSON, Markdown, HTML, PDF) all read this model, so that
every format says the same thing. The model is `engine.protocol_model`; its conflicts are read by
`engine.conflict_records` (shared with the conflict history).
"""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter, defaultdict
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine import store
from sync_pipeline.engine.conflict_records import (
    PrimaryKeys,
    SessionFacts,
    canonical_key,
    dropped_rows,
    read_conflicts,
    remapped_keys,
)
from sync_pipeline.engine.errors import ConflictNotFoundError, SettingsError
from sync_pipeline.engine.faults import checkpoint
from sync_pipeline.engine.protocol_model import (
    KIND_ORDER,
    PROTOCOL_VERSION,
    ConflictRecord,
    DecisionRecord,
    DroppedRow,
    FieldOutcome,
    KeyRemap,
    ModuleProtocol,
    OpCounts,
    Protocol,
    ReplicaHeader,
    SessionHeader,
    SettingsInForce,
    Totals,
)
from sync_pipeline.engine.records import OPEN_STATUSES, ConflictStatus, SessionStatus
from sync_pipeline.engine.settings import SyncSettings, parse_settings

__all__ = [
    "KIND_ORDER",
    "PROTOCOL_VERSION",
    "ConflictRecord",
    "DecisionRecord",
    "DroppedRow",
    "FieldOutcome",
    "KeyRemap",
    "ModuleProtocol",
    "OpCounts",
    "Protocol",
    "ReplicaHeader",
    "SessionFacts",
    "SessionHeader",
    "SettingsInForce",
    "Totals",
    "build_protocol",
    "read_conflicts",
]

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


def _op_counts(conn: Connection, table: sa.Table, by: str, session_id: str) -> list[sa.Row[Any]]:
    """(`by`, op, count) of one session's rows in `table`: its changes per module, its writes per table."""
    return conn.execute(
        sa.select(table.c[by], table.c.op, sa.func.count())
        .where(table.c.session_id == session_id)
        .group_by(table.c[by], table.c.op)
    ).all()


def _state_and_notice(
    session: Mapping[str, Any], changes: int, applied: int, pending: Mapping[str, int]
) -> tuple[str, str]:
    status = session["status"]
    if status == SessionStatus.FAILED:
        error = (session["error"] or "no error was recorded").strip().splitlines()[0]
        if applied:
            return "failed", f"The sync failed: {error}. Rows listed below were written before the failure."
        return (
            "failed",
            f"The sync failed: {error}. Nothing of this session was written to the master "
            "(the load is one transaction, and it was rolled back). The replica can be synchronised again "
            "once the cause is fixed.",
        )
    if status == SessionStatus.WAITING:
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
        local_counts = _op_counts(conn, store.sync_change, "module", session_id)
        applied_counts = _op_counts(conn, store.sync_applied, "table_name", session_id)
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
        pks = PrimaryKeys(conn)
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
        decided = [x for x in own if x.status == ConflictStatus.DECIDED and x.rule]
        by_rule = Counter(x.rule for x in decided if x.rule)
        by_person = Counter(x.decided_by for x in decided if x.rule == "person" and x.decided_by)
        rules_total.update(by_rule)
        people_total.update(by_person)
        pending = sum(1 for x in own if x.status == ConflictStatus.PENDING)
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
