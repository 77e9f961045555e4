"""The load (DESIGN §6): every approved change of a session in one transaction of the master.

Writes go in an order that keeps every foreign key and unique index valid at each statement (parents
before children for inserts, children before parents for deletes, a unique value freed before another row
takes it: see `_write_order`). Before writing, every row the load touches is re-read (locked on PostgreSQL)
and compared with what detection saw. A row the master changed in between is not overwritten: `StaleRows`
names the changes that must go back to detection.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync_pipeline.engine.detect import Detected, fetch_rows_by_key, still_referenced
from sync_pipeline.engine.dialects import impl_for
from sync_pipeline.engine.errors import SyncError
from sync_pipeline.engine.faults import checkpoint
from sync_pipeline.engine.load_columns import grouped_by_columns, insert_statement, writable
from sync_pipeline.engine.load_verify import WrittenRows, verify_load
from sync_pipeline.engine.progress import report
from sync_pipeline.engine.resolve import CurrentDecision
from sync_pipeline.engine.schema import TableInfo, fk_order, normalize_row, references_to
from sync_pipeline.engine.sequences import advance_past

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
    verified: dict[str, Any] = field(default_factory=dict)  # what `verify_load` compared (load_verify)


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
            if values and _decided_parent(plan, change_id, d, infos, values):
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
            if values and not _decided_parent(plan, change_id, d, infos, values):
                continue
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
                if change.op == "insert" and d.master is not None and info.generated_pk:
                    # Its generated key is taken on the master (it would have been remapped): a new key.
                    values = {k: v for k, v in local.items() if k not in info.pk}
                    plan.operations.append(
                        Operation(change_id, change.table, "insert", change.key, values, ABSENT, "remap", new_key=True)
                    )
                elif change.op == "insert":
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


def _decided_parent(
    plan: Plan, change_id: int, d: Detected, infos: dict[str, TableInfo], values: dict[str, Any]
) -> bool:
    """A decided write of the local row's reference to a parent the master deleted (detection put it in
    `detail`) brings the parent back from the master's tombstone of it, as an orphan decided 'local' does.
    Without a tombstone the write is dropped (False). A write that keeps the master's reference needs nothing."""
    parent_table = d.detail.get("parent_table")
    if not parent_table:
        return True
    local = d.change.local or {}
    parent_key = d.detail["parent_key"]
    for fk in infos[d.change.table].foreign_keys:
        if fk.parent_table != parent_table or set(fk.parent_columns) != set(parent_key):
            continue
        if tuple(local[c] for c in fk.columns) != tuple(parent_key[c] for c in fk.parent_columns):
            continue
        written = {**(d.master or {}), **values}
        if not set(fk.columns) & set(values) or any(written.get(c) != local[c] for c in fk.columns):
            return True  # the master's reference stays (or a mix of both sides: the load checks it)
        if not d.detail.get("parent_row"):
            plan.dropped.append((change_id, d.change.table, d.change.key, "its parent was deleted on the master"))
            return False
        _recreate_parent(plan, change_id, d, infos)
        return True
    return True


def _recreate_parent(plan: Plan, change_id: int, d: Detected, infos: dict[str, TableInfo]) -> None:
    """Insert the parent the master deleted, once however many rows need it, from the master's tombstone of
    it: detection put that image in `detail['parent_row']` (engine/tombstones.py), never the replica's row."""
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
        # An insert expecting its key free needs no read: if a writer took the key meanwhile, the insert
        # fails on the primary key and the whole session is detected again (load_with_redetection).
        if operation.expected is not ABSENT and not (operation.op == "insert" and operation.expected is None):
            by_table[operation.table].append(operation)
    stale: list[int] = []
    for table, operations in by_table.items():
        info = infos[table]
        # Rows as the driver gives them nearly always equal detection's normalised snapshot (read by the same
        # driver); only where one does not is it normalised before it counts as changed.
        current = fetch_rows_by_key(conn, info, [o.key for o in operations], for_update=True, normalized=False)
        normalized: dict[tuple[Any, ...], dict[str, Any]] | None = None
        for operation in operations:
            if current.get(operation.key) == operation.expected:
                continue
            if _only_trigger_columns_differ(info, operation, current.get(operation.key)):
                continue
            if normalized is None:
                normalized = {}
                for row in current.values():
                    normal = normalize_row(row, info.table)
                    normalized[info.key_of(normal)] = normal
            if normalized.get(operation.key) != operation.expected and not _only_trigger_columns_differ(
                info, operation, normalized.get(operation.key)
            ):
                stale.append(operation.change_id)
    return sorted(set(stale))


def _only_trigger_columns_differ(info: TableInfo, operation: Operation, current: dict[str, Any] | None) -> bool:
    """A row whose only changes since detection are in columns the master's triggers maintain (a
    `last_update`, a counter kept from another table) and the operation does not write: a side effect
    of other writes, on which no decision of this row was based. The columns keys and references use
    always count (the write order is planned on them)."""
    if not info.maintained_columns or current is None or not isinstance(operation.expected, dict):
        return False
    differing = {c for c in current if current[c] != operation.expected.get(c)}
    planned_on = set(info.pk) | {c for fk in info.foreign_keys for c in fk.columns}
    planned_on |= {c for columns in _unique_column_sets(info) for c in columns}
    ignorable = info.maintained_columns - set(operation.values) - planned_on
    return bool(differing) and differing <= ignorable


def execute_plan(conn: Connection, plan: Plan, infos: dict[str, TableInfo]) -> LoadResult:
    """Write the plan into the master (inside the caller's transaction). Raises StaleRows first if needed.

    The database checks foreign keys and unique indexes at every statement, not at the commit: the writes
    go in an order in which every row's parent exists when the row is written and every unique value
    (natural key, any unique constraint or index) is freed before another row takes it. See `_write_order`.
    """
    stale = check_unchanged(conn, plan, infos)
    if stale:
        raise StaleRows(stale)
    for operation in plan.operations:
        operation.values = writable(infos[operation.table], operation.op, operation.values)
    writer = _Writer(conn, plan, infos)
    written, total = 0, len(plan.operations)
    for op, table, indexes in _write_order(plan.operations, infos):
        operations = [plan.operations[i] for i in indexes]
        if op == "insert":
            writer.insert(table, operations)
        elif op == "update":
            writer.update(table, operations)
        elif op == "release":
            writer.release(table, operations)
            continue  # the updates that follow count these rows
        else:
            writer.delete(table, operations)
        written += len(operations)
        report("load", written, total)
    verified = verify_load(conn, infos, writer.written, writer.applied)
    return LoadResult(writer.applied, writer.key_map, writer.dropped, verified)


# A unique value of a table: (table, columns, values); a row the FKs point at: (table, parent columns, values).
Slot = tuple[str, tuple[str, ...], tuple[Any, ...]]


def _values_of(row: dict[str, Any] | None, columns: Iterable[str]) -> tuple[Any, ...] | None:
    """The row's values of `columns` as a hashable tuple; None if one is NULL or unknown (NULLs never
    collide in a unique index, nor reference anything)."""
    if row is None:
        return None
    values = tuple(row.get(column) for column in columns)
    if None in values:
        return None
    try:
        hash(values)
    except TypeError:
        values = tuple(map(repr, values))
    return values


def _unique_column_sets(info: TableInfo) -> list[tuple[str, ...]]:
    """Every unique constraint or unique index (on plain columns) of a table, but its primary key: no plan
    hands a key from one row to another (a local row under a key the master still holds is remapped or a
    conflict, a re-inserted row's key is free), and leaving it out keeps the common table free of work."""
    found: set[tuple[str, ...]] = set()
    for constraint in info.table.constraints:
        if isinstance(constraint, sa.UniqueConstraint) and len(constraint.columns):
            found.add(tuple(c.name for c in constraint.columns))
    for index in info.table.indexes:
        if index.unique and len(index.columns) and len(index.columns) == len(index.expressions):
            found.add(tuple(c.name for c in index.columns))
    return sorted(found - {tuple(info.pk)})


def _dependencies(
    operations: list[Operation], infos: dict[str, TableInfo]
) -> tuple[dict[int, set[int]], dict[int, set[str]]]:
    """For each operation (by index), the operations that must be written before it; and for each update
    that takes a unique value, the columns it takes it in, for each delete that frees one another write
    takes, the columns it frees (see `_write_order` for cycles).

    - a unique value is taken (insert, update) only after the row holding it let it go (delete, update);
    - a row pointing at a parent the load inserts comes after that insert (also for remapped parents: their
      new key is known only then);
    - a row is deleted only after the rows that stop pointing at it (deleted or re-pointed) let go of it, and
      after the rows the load makes point at it, so that `still_referenced` sees them and keeps it.
    """
    unique_sets = {name: _unique_column_sets(info) for name, info in infos.items()}
    referenced: dict[str, set[tuple[str, ...]]] = defaultdict(set)  # table -> column lists FKs point at
    for info in infos.values():
        for fk in info.foreign_keys:
            referenced[fk.parent_table].add(fk.parent_columns)
    # Only what can meet a counterpart is computed: a large load of unrelated rows costs next to nothing.
    tables_by_op: dict[str, set[str]] = defaultdict(set)
    for o in operations:
        tables_by_op[o.op].add(o.table)
    inserted, deleted = tables_by_op["insert"], tables_by_op["delete"]
    freeing = deleted | tables_by_op["update"]  # tables where a unique value can be let go
    pointed_at = inserted | deleted  # parents a row must wait for (an insert) or hold up (a delete)
    # Parents of tables the load writes rows into: their inserts and deletes matter to those rows.
    parents = {fk.parent_table for t in inserted | tables_by_op["update"] for fk in infos[t].foreign_keys}
    parents |= {fk.parent_table for t in deleted for fk in infos[t].foreign_keys}
    takes: list[tuple[int, Slot]] = []
    takers: dict[int, set[str]] = defaultdict(set)
    frees: dict[Slot, list[int]] = defaultdict(list)
    points: list[tuple[int, Slot]] = []
    provides: dict[Slot, list[int]] = defaultdict(list)
    lets_go: list[tuple[int, Slot]] = []
    removes: dict[Slot, list[int]] = defaultdict(list)
    for i, o in enumerate(operations):
        info = infos[o.table]
        uniques = unique_sets[o.table] if o.table in freeing else []
        fks = [fk for fk in info.foreign_keys if fk.parent_table in pointed_at]
        before = o.expected if isinstance(o.expected, dict) else None
        if o.op == "insert":
            for columns in uniques:
                if o.new_key and set(columns) & set(info.pk):
                    continue
                if (value := _values_of(o.values, columns)) is not None:
                    takes.append((i, (o.table, columns, value)))
            for fk in fks:
                if (value := _values_of(o.values, fk.columns)) is not None:
                    points.append((i, (fk.parent_table, fk.parent_columns, value)))
        elif o.op == "update":
            uniques = [u for u in uniques if any(c in o.values for c in u)]
            fks = [fk for fk in fks if any(c in o.values for c in fk.columns)]
            after = {**(before or {}), **o.values} if uniques or fks else {}
            for columns in uniques:
                old, new = _values_of(before, columns), _values_of(after, columns)
                if old != new and old is not None:
                    frees[(o.table, columns, old)].append(i)
                if old != new and new is not None:
                    takes.append((i, (o.table, columns, new)))
                    takers[i].update(c for c in columns if c in o.values)
            for fk in fks:
                old, new = _values_of(before, fk.columns), _values_of(after, fk.columns)
                if old != new and old is not None:
                    lets_go.append((i, (fk.parent_table, fk.parent_columns, old)))
                if old != new and new is not None:
                    points.append((i, (fk.parent_table, fk.parent_columns, new)))
        else:
            row = before if before is not None else info.key_dict(o.key) if o.key is not None else None
            for columns in uniques:
                if (value := _values_of(row, columns)) is not None:
                    frees[(o.table, columns, value)].append(i)
            if o.table in parents:
                for columns in referenced[o.table]:
                    if (value := _values_of(row, columns)) is not None:
                        removes[(o.table, columns, value)].append(i)
            for fk in fks:
                if (value := _values_of(row, fk.columns)) is not None:
                    lets_go.append((i, (fk.parent_table, fk.parent_columns, value)))
    wanted = {slot for _, slot in points}
    for i, o in enumerate(operations):
        if o.op == "insert" and o.table in parents:
            # Children name a remapped row by its local key; the master's key of it is not known yet.
            row = {**o.values, **infos[o.table].key_dict(o.key)} if o.new_key and o.key is not None else o.values
            for columns in referenced[o.table]:
                value = _values_of(row, columns)
                if value is not None and (slot := (o.table, columns, value)) in wanted:
                    provides[slot].append(i)
    needs: dict[int, set[int]] = defaultdict(set)  # a set only for the few operations that wait
    for i, slot in takes:
        for j in frees.get(slot, ()):
            if j != i:
                needs[i].add(j)
                if operations[j].op == "delete":  # a row going away may let go of the value early (a cycle)
                    takers[j].update(slot[1])
    for i, slot in points:
        for j in provides.get(slot, ()):
            if j != i:
                needs[i].add(j)
        for j in removes.get(slot, ()):
            needs[j].add(i)
    for i, slot in lets_go:
        for j in removes.get(slot, ()):
            if j != i:
                needs[j].add(i)
    # A row both updated (a decision that writes into it) and deleted: the update first, so that it is
    # written (and recorded) before the row goes, as the decisions were taken.
    deleting = {(o.table, o.key): i for i, o in enumerate(operations) if o.op == "delete"}
    for i, o in enumerate(operations):
        if o.op == "update" and (j := deleting.get((o.table, o.key))) is not None:
            needs[j].add(i)
    return needs, takers


def _write_order(operations: list[Operation], infos: dict[str, TableInfo]) -> Iterator[tuple[str, str, list[int]]]:
    """Batches of operations (op, table, indexes) in an order that respects `_dependencies`.

    Rounds of deletes (children first), inserts (parents first), updates (parents first); each batch holds
    every operation of its table and kind whose prerequisites are written, so a load without dependencies
    is one batch per table and kind, as before. Deletes go first because they free unique values and hold
    nothing up; inserts before updates because an update that points at a new parent is more common than
    an insert that takes a value an update frees (that insert waits for the next round).
    """
    needs, takers = _dependencies(operations, infos)
    order = fk_order(infos)
    slots = [("delete", t) for t in reversed(order)] + [(op, t) for op in ("insert", "update") for t in order]
    waiting: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, o in enumerate(operations):
        waiting[(o.op, o.table)].append(i)
    written: set[int] = set()
    unblocked: set[int] = set()  # updates that let go of their unique values early (a cycle)
    pending = len(operations)
    while pending:
        progress = False
        for slot in slots:
            while waiting.get(slot):
                ready = [i for i in waiting[slot] if i not in needs or needs[i] <= written]
                if slot[0] == "insert" and any(not operations[i].new_key for i in waiting[slot]):
                    # Rows with their own keys first: the key generator must hand remapped rows keys past them.
                    ready = [i for i in ready if not operations[i].new_key]
                if not ready:
                    break
                written.update(ready)
                waiting[slot] = [i for i in waiting[slot] if i not in written]
                pending -= len(ready)
                progress = True
                yield slot[0], slot[1], ready
        if progress:
            continue
        # A cycle: unique values rotated among rows of one table (two contacts swap their e-mail addresses),
        # so every row holds the value another takes. Updates that take such a value in nullable columns,
        # and write no reference (nothing can drop them later), first let go of their old value: NULL may
        # repeat in a unique index. Then nothing waits for them any more. Likewise a row to be deleted that
        # holds a value a new row takes, while the delete waits for rows that move to that new row (a record
        # made anew under another key, its children moved to it, the old one deleted): it lets go first.
        released: dict[str, list[int]] = defaultdict(list)
        for (op, table), indexes in waiting.items():
            columns = infos[table].table.columns
            references = {c for fk in infos[table].foreign_keys for c in fk.columns}
            for i in indexes:
                taken = takers.get(i)
                if (
                    op in ("update", "delete")
                    and i not in unblocked
                    and taken
                    and (op == "delete" or not references & set(operations[i].values))
                    and all(columns[c].nullable for c in taken)
                ):
                    released[table].append(i)
        if released:
            for table, indexes in released.items():
                yield "release", table, indexes
            unblocked.update(i for indexes in released.values() for i in indexes)
            for i, prerequisites in needs.items():
                if operations[i].op != "delete":  # a delete waits for a row to let go of it, not for a value
                    prerequisites -= unblocked
            continue
        # A table referencing itself, or values held in columns that cannot be NULL: no order works. Write
        # the rest round by round and let the database judge (it refuses, the load is rolled back).
        needs = {}


class _Writer:
    """Writes batches of one table and kind, keeps the key map, what was dropped and what was applied."""

    def __init__(self, conn: Connection, plan: Plan, infos: dict[str, TableInfo]) -> None:
        self.conn, self.infos = conn, infos
        self.key_map = dict(plan.key_map)
        self.dropped = list(plan.dropped)
        self.dropped_keys = set(plan.gone)
        self.applied: list[AppliedRow] = []
        self.written = WrittenRows()  # for `verify_load`
        self.deleted = {(o.table, o.key) for o in plan.operations if o.op == "delete"}
        tables = {o.table for o in plan.operations if o.op == "delete"}
        self.references = references_to(conn, tables) if tables else {}

    def drop(self, operation: Operation, why: str) -> None:
        """Leave a write out of the load, with the reason the protocol shows."""
        assert operation.key is not None
        self.dropped.append((operation.change_id, operation.table, operation.key, why))

    def rewrite(self, operation: Operation) -> bool:
        """Point references at remapped parents; False if a parent was dropped (drop this row too)."""
        info = self.infos[operation.table]
        # An update may write part of a composite reference: the rest is the master row's.
        row = {**operation.expected, **operation.values} if isinstance(operation.expected, dict) else operation.values
        for fk in info.foreign_keys:
            if not set(fk.columns) & set(operation.values) or not set(fk.columns) <= set(row):
                continue
            parent_key = tuple(row[c] for c in fk.columns)
            mapped = self.key_map.get((fk.parent_table, parent_key))
            if mapped is not None:
                operation.values.update(dict(zip(fk.columns, mapped, strict=True)))
            elif (fk.parent_table, parent_key) in self.dropped_keys:
                return False
        return True

    def insert(self, table: str, operations: list[Operation]) -> None:
        conn, info = self.conn, self.infos[table]
        plain: list[Operation] = []
        remapped: list[Operation] = []
        for operation in operations:
            if not self.rewrite(operation):
                self.drop(operation, "its parent row was not synchronised")
                self.dropped_keys.add((table, operation.key))  # type: ignore[arg-type]
                continue
            (remapped if operation.new_key else plain).append(operation)
        plain = self._without_missing_parents(table, plain, "orphan_parent")
        for columns, rows in grouped_by_columns(o.values for o in plain):
            conn.execute(insert_statement(conn, info, columns), rows)
            checkpoint("load_write")
        for o in plain:
            self.applied.append(
                AppliedRow(o.change_id, table, info.key_of(o.values), "insert", None, o.values, o.source)
            )
            self.written.wrote(table, info.key_of(o.values), o.values)
        advance_past(conn, info.sequences, [o.values for o in plain])  # before the remapped rows take keys
        for operation in remapped:
            new_key = _insert_returning_key(conn, info, operation.values)
            checkpoint("load_write")
            self.key_map[(table, operation.key)] = new_key  # type: ignore[index]
            after = dict(operation.values) | info.key_dict(new_key)
            self.written.wrote(table, new_key, after)
            self.applied.append(AppliedRow(operation.change_id, table, new_key, "insert", None, after, "remap"))

    def update(self, table: str, operations: list[Operation]) -> None:
        conn, info = self.conn, self.infos[table]
        kept: list[Operation] = []
        for operation in operations:
            if not self.rewrite(operation):
                self.drop(operation, "it points at a row that was not synchronised")
                continue
            kept.append(operation)
        kept = self._without_missing_parents(table, kept, "decision")
        # Updates of the same columns go to the database as one executemany.
        by_columns: dict[tuple[str, ...], list[Operation]] = defaultdict(list)
        for operation in kept:
            values = {k: v for k, v in operation.values.items() if k not in info.pk}
            if values:
                operation.values = values
                by_columns[tuple(sorted(values))].append(operation)
        for columns, batch in by_columns.items():
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
                for o in batch
            ]
            for start in range(0, len(params), 1000):
                conn.execute(statement, params[start : start + 1000])
                checkpoint("load_write")
            advance_past(conn, info.sequences, [o.values for o in batch])
            for o in batch:
                self.written.wrote(table, o.key, o.values)  # type: ignore[arg-type]
                before = o.expected if isinstance(o.expected, dict) else None
                after = (dict(before) if before else {}) | o.values
                self.applied.append(AppliedRow(o.change_id, table, o.key, "update", before, after, o.source))  # type: ignore[arg-type]

    def _without_missing_parents(self, table: str, operations: list[Operation], source: str) -> list[Operation]:
        """Writes of `source` whose reference points at a row the master no longer has are dropped, as an
        orphan decided 'master' is, before the database refuses the whole load:
        - decided updates (a conflict decided 'local'): detection brings the parent back where it knows the
          tombstone of it (see `_decided_parent`); this catches the rest (a composite reference decided
          field by field);
        - parents brought back from their tombstone (`orphan_parent`) whose own parent the master deleted too:
          detection reads the tombstone of the first parent only. Rows that need them are dropped too."""
        info = self.infos[table]
        missing: set[int] = set()
        for fk in info.foreign_keys:
            wanted: dict[int, tuple[Any, ...]] = {}
            for n, o in enumerate(operations):
                if o.source == source and set(fk.columns) & set(o.values):
                    row = {**(o.expected if isinstance(o.expected, dict) else {}), **o.values}
                    parent_key = tuple(row.get(c) for c in fk.columns)
                    if None not in parent_key:
                        wanted[n] = parent_key
            if not wanted:
                continue
            parent_info = self.infos.get(fk.parent_table) or TableInfo(
                info.table.metadata.tables[fk.parent_table], fk.parent_columns, False
            )
            present = fetch_rows_by_key(self.conn, parent_info, wanted.values(), fk.parent_columns)
            missing.update(n for n, parent_key in wanted.items() if parent_key not in present)
        for n in sorted(missing):
            o = operations[n]
            self.drop(o, "it points at a row the master deleted")
            if o.op == "insert":
                self.dropped_keys.add((table, o.key))  # type: ignore[arg-type]
        return [o for n, o in enumerate(operations) if n not in missing]

    def release(self, table: str, operations: list[Operation]) -> None:
        """Write NULL into the unique columns these updates are about to write, or the nullable unique
        columns of rows about to be deleted (see `_write_order`): their old values are free for other rows;
        the updates and deletes themselves follow and are recorded then."""
        info = self.infos[table]
        unique = {c for columns in _unique_column_sets(info) for c in columns}
        by_columns: dict[tuple[str, ...], list[Operation]] = defaultdict(list)
        for o in operations:
            lets_go = set(o.values) if o.op == "update" else {c for c in unique if info.table.columns[c].nullable}
            by_columns[tuple(sorted(unique & lets_go))].append(o)
        for columns, batch in by_columns.items():
            statement = (
                sa.update(info.table)
                .where(*[info.table.columns[c] == sa.bindparam(f"_key_{c}") for c in info.pk])
                .values({c: sa.null() for c in columns})
            )
            params = [{f"_key_{c}": v for c, v in zip(info.pk, o.key or (), strict=True)} for o in batch]
            for start in range(0, len(params), 1000):
                self.conn.execute(statement, params[start : start + 1000])
                checkpoint("load_write")
            for o in batch:  # the update that follows writes them; if it is dropped, they must be as before
                before = o.expected if isinstance(o.expected, dict) else {}
                self.written.wrote(table, o.key, {c: before.get(c) for c in columns})  # type: ignore[arg-type]

    def delete(self, table: str, operations: list[Operation]) -> None:
        conn, info = self.conn, self.infos[table]
        deletes = operations
        if self.references.get(table):
            # Never delete a row that master rows still reference (an FK error, or worse, a cascade). The rows
            # this load deletes or re-points elsewhere were written before (see `_dependencies`).
            referenced = still_referenced(conn, info, self.references[table], [o.key for o in deletes], self.deleted)
            for o in deletes:
                if o.key in referenced:
                    self.drop(o, "rows in the master still reference it")
                    self.deleted.discard((table, o.key))  # type: ignore[arg-type]  # so its parents see it stay
            deletes = [o for o in deletes if o.key not in referenced]
        for start in range(0, len(deletes), 500):
            chunk = deletes[start : start + 500]
            keys = [o.key for o in chunk]
            if len(info.pk) == 1:
                condition = impl_for(conn).in_list(info.table.columns[info.pk[0]], [k[0] for k in keys])  # type: ignore[index]
            else:
                condition = sa.tuple_(*[info.table.columns[c] for c in info.pk]).in_(keys)
            conn.execute(sa.delete(info.table).where(condition))
            checkpoint("load_write")
            for o in chunk:
                self.written.deleted(table, o.key)  # type: ignore[arg-type]
            self.applied.extend(
                AppliedRow(o.change_id, table, o.key, "delete", o.expected, None, o.source)  # type: ignore[arg-type]
                for o in chunk
            )


def _insert_returning_key(conn: Connection, info: TableInfo, values: dict[str, Any]) -> tuple[Any, ...]:
    return impl_for(conn).insert_returning_key(conn, info, values)


def advance_sequence(conn: Connection, info: TableInfo) -> None:
    """Move the generator of a serial/identity key past the table's highest key (reads the whole key
    column's maximum: for preparing masters in tests and tools; the load uses `advance_past`)."""
    impl_for(conn).advance_sequence_to_max(conn, info)
