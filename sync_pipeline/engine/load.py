"""The load (DESIGN §6): every approved change of a session in one transaction of the master.

Inserts parents first, deletes children first; before writing, every row the load touches is
re-read (locked on PostgreSQL) and compared with what detection saw. A row the master changed in
between is not overwritten: `StaleRows` names the changes that must go back to detection.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import REGCLASS
from sqlalchemy.engine import Connection

from sync_pipeline.engine.detect import Detected, fetch_rows_by_key, still_referenced
from sync_pipeline.engine.errors import SyncError
from sync_pipeline.engine.faults import checkpoint
from sync_pipeline.engine.resolve import CurrentDecision
from sync_pipeline.engine.schema import TableInfo, fk_order, references_to

ABSENT = object()


class StaleRows(SyncError):
    """Rows the master changed after detection; their changes go back to detection."""

    def __init__(self, change_ids: list[int]) -> None:
        self.change_ids = change_ids
        super().__init__(f"{len(change_ids)} row(s) changed on the master after detection")


@dataclass
class Operation:
    change_id: int
    table: str
    op: str  # insert | update | delete
    key: tuple[Any, ...] | None  # local key (insert) or master key (update/delete)
    values: dict[str, Any]
    expected: Any  # the master row detection saw, None for "absent", ABSENT for "no check"
    source: str  # change | decision | remap | orphan_parent
    new_key: bool = False  # insert under a key the master assigns


@dataclass
class Plan:
    operations: list[Operation] = field(default_factory=list)
    key_map: dict[tuple[str, tuple[Any, ...]], tuple[Any, ...]] = field(default_factory=dict)
    dropped: list[tuple[int, str, tuple[Any, ...], str]] = field(default_factory=list)  # id, table, key, why
    # Local rows that will not exist in the master under their key: rows referencing them are dropped too.
    gone: set[tuple[str, tuple[Any, ...]]] = field(default_factory=set)
    recreated: set[tuple[str, tuple[Any, ...]]] = field(default_factory=set)


@dataclass
class AppliedRow:
    change_id: int
    table: str
    key: tuple[Any, ...]
    op: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    source: str


@dataclass
class LoadResult:
    applied: list[AppliedRow]
    key_map: dict[tuple[str, tuple[Any, ...]], tuple[Any, ...]]
    dropped: list[tuple[int, str, tuple[Any, ...], str]]


def _choice(decision: CurrentDecision | None, name: str | None) -> tuple[str, Any]:
    assert decision is not None
    if name is not None and name in decision.fields:
        chosen = decision.fields[name]
        return chosen.choice, chosen.value
    return decision.row or "master", None


def build_plan(items: list[tuple[int, Detected, CurrentDecision | None]], infos: dict[str, TableInfo]) -> Plan:
    """Turn detected changes and their decisions into master writes (§5's decision table)."""
    plan = Plan()
    for change_id, d, decision in items:
        change, info = d.change, infos[d.change.table]
        local = change.local or {}
        if d.action == "skip":
            continue
        if d.action == "apply":
            if change.op == "insert":
                plan.operations.append(
                    Operation(change_id, change.table, "insert", change.key, dict(local), None, "change")
                )
            elif change.op == "update":
                plan.operations.append(
                    Operation(
                        change_id,
                        change.table,
                        "update",
                        change.key,
                        {f: local[f] for f in d.apply_fields},
                        d.master,
                        "change",
                    )
                )
            else:
                plan.operations.append(Operation(change_id, change.table, "delete", change.key, {}, d.master, "change"))
            continue
        if d.action == "remap":
            values = {k: v for k, v in local.items() if k not in info.pk}
            plan.operations.append(
                Operation(change_id, change.table, "insert", change.key, values, ABSENT, "remap", new_key=True)
            )
            continue
        kind = d.kind
        names = [f.name for f in d.fields]
        if kind == "update_update":
            values = {f: local[f] for f in d.apply_fields}
            for name in names:
                chosen, value = _choice(decision, name)
                if chosen == "local":
                    values[name] = local[name]
                elif chosen == "value":
                    values[name] = value
            if values:
                plan.operations.append(
                    Operation(change_id, change.table, "update", change.key, values, d.master, "decision")
                )
        elif kind == "update_delete":
            if _choice(decision, None)[0] == "local":
                if d.detail.get("parent_table"):  # the master deleted its parent too
                    if not d.detail.get("parent_row"):
                        plan.dropped.append(
                            (change_id, change.table, change.key, "its parent was deleted on the master")
                        )
                        continue
                    _recreate_parent(plan, change_id, d, infos)
                if (change.table, change.key) in plan.recreated:
                    continue  # already brought back as the parent of another row
                plan.recreated.add((change.table, change.key))
                plan.operations.append(
                    Operation(change_id, change.table, "insert", change.key, dict(local), None, "decision")
                )
        elif kind == "delete_update":
            if _choice(decision, None)[0] == "local":
                plan.operations.append(
                    Operation(change_id, change.table, "delete", change.key, {}, d.master, "decision")
                )
        elif kind in ("insert_insert", "duplicate"):
            target = d.target_key or change.key
            if kind == "duplicate":
                plan.key_map[(change.table, change.key)] = target
            values = {n: local[n] for n in names if _choice(decision, n)[0] == "local"}
            if values:
                plan.operations.append(
                    Operation(change_id, change.table, "update", target, values, d.master, "decision")
                )
            elif kind == "insert_insert":
                plan.dropped.append((change_id, change.table, change.key, "the master's row was kept"))
            else:
                plan.dropped.append((change_id, change.table, change.key, "the master's row is the same record"))
        elif kind == "orphan":
            if _choice(decision, None)[0] == "local" and d.detail.get("parent_row"):
                _recreate_parent(plan, change_id, d, infos)
                if change.op == "insert":
                    plan.operations.append(
                        Operation(change_id, change.table, "insert", change.key, dict(local), None, "decision")
                    )
                else:
                    plan.operations.append(
                        Operation(
                            change_id,
                            change.table,
                            "update",
                            change.key,
                            {f: local[f] for f in d.apply_fields},
                            d.master,
                            "decision",
                        )
                    )
            else:
                plan.dropped.append((change_id, change.table, change.key, "its parent was deleted on the master"))
                if change.op == "insert":
                    plan.gone.add((change.table, change.key))
    return plan


def _recreate_parent(plan: Plan, change_id: int, d: Detected, infos: dict[str, TableInfo]) -> None:
    """Insert the parent the master deleted, from the replica's row, once however many rows need it."""
    parent_table = d.detail["parent_table"]
    key = infos[parent_table].key_of(d.detail["parent_row"])
    if (parent_table, key) in plan.recreated:
        return
    plan.recreated.add((parent_table, key))
    plan.operations.append(
        Operation(change_id, parent_table, "insert", key, dict(d.detail["parent_row"]), None, "orphan_parent")
    )


def check_unchanged(conn: Connection, plan: Plan, infos: dict[str, TableInfo]) -> list[int]:
    """Change ids whose master rows differ from what detection saw (rows are locked on PostgreSQL)."""
    by_table: dict[str, list[Operation]] = defaultdict(list)
    for operation in plan.operations:
        if operation.expected is not ABSENT:
            by_table[operation.table].append(operation)
    stale: list[int] = []
    for table, operations in by_table.items():
        current = fetch_rows_by_key(conn, infos[table], [o.key for o in operations], for_update=True)
        for operation in operations:
            if current.get(operation.key) != operation.expected:
                stale.append(operation.change_id)
    return sorted(set(stale))


def execute_plan(conn: Connection, plan: Plan, infos: dict[str, TableInfo]) -> LoadResult:
    """Write the plan into the master (inside the caller's transaction). Raises StaleRows first if needed."""
    stale = check_unchanged(conn, plan, infos)
    if stale:
        raise StaleRows(stale)
    order = fk_order(infos)
    key_map = dict(plan.key_map)
    dropped = list(plan.dropped)
    dropped_keys = set(plan.gone)
    applied: list[AppliedRow] = []
    by_phase: dict[tuple[str, str], list[Operation]] = defaultdict(list)
    for operation in plan.operations:
        by_phase[(operation.op, operation.table)].append(operation)

    def rewrite(operation: Operation) -> bool:
        """Point references at remapped parents; False if a parent was dropped (drop this row too)."""
        info = infos[operation.table]
        for fk in info.foreign_keys:
            if not set(fk.columns) <= set(operation.values):
                continue
            parent_key = tuple(operation.values[c] for c in fk.columns)
            mapped = key_map.get((fk.parent_table, parent_key))
            if mapped is not None:
                operation.values.update(dict(zip(fk.columns, mapped, strict=True)))
            elif (fk.parent_table, parent_key) in dropped_keys:
                return False
        return True

    for table in order:
        info = infos[table]
        plain: list[Operation] = []
        remapped: list[Operation] = []
        for operation in by_phase.get(("insert", table), []):
            if not rewrite(operation):
                dropped.append((operation.change_id, table, operation.key, "its parent row was not synchronised"))
                dropped_keys.add((table, operation.key))  # type: ignore[arg-type]
                continue
            (remapped if operation.new_key else plain).append(operation)
        # Rows with their own keys first: the key generator must hand the remapped rows keys past them.
        if plain:
            conn.execute(sa.insert(info.table), [o.values for o in plain])
            checkpoint("load_write")
            applied.extend(
                AppliedRow(o.change_id, table, info.key_of(o.values), "insert", None, o.values, o.source) for o in plain
            )
            if info.generated_pk and conn.dialect.name == "postgresql":
                advance_sequence(conn, info)
        for operation in remapped:
            new_key = _insert_returning_key(conn, info, operation.values)
            checkpoint("load_write")
            key_map[(table, operation.key)] = new_key  # type: ignore[index]
            after = dict(operation.values) | info.key_dict(new_key)
            applied.append(AppliedRow(operation.change_id, table, new_key, "insert", None, after, "remap"))
    for table in order:
        info = infos[table]
        # Updates of the same columns go to the database as one executemany.
        by_columns: dict[tuple[str, ...], list[Operation]] = defaultdict(list)
        for operation in by_phase.get(("update", table), []):
            if not rewrite(operation):
                dropped.append(
                    (operation.change_id, table, operation.key, "it points at a row that was not synchronised")
                )
                continue
            values = {k: v for k, v in operation.values.items() if k not in info.pk}
            if values:
                operation.values = values
                by_columns[tuple(sorted(values))].append(operation)
        for columns, operations in by_columns.items():
            statement = (
                sa.update(info.table)
                .where(*[info.table.columns[c] == sa.bindparam(f"_key_{c}") for c in info.pk])
                .values({c: sa.bindparam(f"_new_{c}") for c in columns})
            )
            params = [
                {
                    **{f"_key_{c}": v for c, v in zip(info.pk, o.key, strict=True)},  # type: ignore[arg-type]
                    **{f"_new_{c}": o.values[c] for c in columns},
                }
                for o in operations
            ]
            for start in range(0, len(params), 1000):
                conn.execute(statement, params[start : start + 1000])
                checkpoint("load_write")
            for o in operations:
                before = o.expected if isinstance(o.expected, dict) else None
                after = (dict(before) if before else {}) | o.values
                applied.append(AppliedRow(o.change_id, table, o.key, "update", before, after, o.source))  # type: ignore[arg-type]
    deleted = {(o.table, o.key) for o in plan.operations if o.op == "delete"}
    references = references_to(conn, {t for (op, t) in by_phase if op == "delete"}) if deleted else {}
    for table in reversed(order):
        info = infos[table]
        deletes = by_phase.get(("delete", table), [])
        if deletes and references.get(table):
            # Never delete a row that master rows still reference (an FK error, or worse, a cascade).
            referenced = still_referenced(conn, info, references[table], [o.key for o in deletes], deleted)
            for o in deletes:
                if o.key in referenced:
                    dropped.append((o.change_id, table, o.key, "rows in the master still reference it"))  # type: ignore[arg-type]
                    deleted.discard((table, o.key))  # type: ignore[arg-type]  # so its parents see it stay
            deletes = [o for o in deletes if o.key not in referenced]
        for start in range(0, len(deletes), 500):
            chunk = deletes[start : start + 500]
            keys = [o.key for o in chunk]
            if len(info.pk) == 1:
                condition = info.table.columns[info.pk[0]].in_([k[0] for k in keys])  # type: ignore[index]
            else:
                condition = sa.tuple_(*[info.table.columns[c] for c in info.pk]).in_(keys)
            conn.execute(sa.delete(info.table).where(condition))
            checkpoint("load_write")
            applied.extend(
                AppliedRow(o.change_id, table, o.key, "delete", o.expected, None, o.source)  # type: ignore[arg-type]
                for o in chunk
            )
    return LoadResult(applied, key_map, dropped)


def _insert_returning_key(conn: Connection, info: TableInfo, values: dict[str, Any]) -> tuple[Any, ...]:
    pk_columns = [info.table.columns[c] for c in info.pk]
    row = conn.execute(sa.insert(info.table).values(values).returning(*pk_columns)).one()
    return tuple(row)


def advance_sequence(conn: Connection, info: TableInfo) -> None:
    """After inserting explicit values into a serial/identity key, move its sequence past them."""
    column = info.table.columns[info.pk[0]]
    sequence = conn.execute(
        sa.select(sa.func.pg_get_serial_sequence(conn.dialect.identifier_preparer.quote(info.name), column.name))
    ).scalar()
    if not sequence:
        return
    highest = sa.select(sa.func.max(column)).scalar_subquery()
    last = sa.func.coalesce(sa.func.pg_sequence_last_value(sa.cast(sequence, REGCLASS)), 0)
    conn.execute(sa.select(sa.func.setval(sequence, sa.func.greatest(highest, last, 1))))
