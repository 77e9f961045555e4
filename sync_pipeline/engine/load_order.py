"""The load's write order: batches of one table and kind in an order that keeps every foreign key and
unique index valid at each statement (parents before children for inserts, children before parents for
deletes, a unique value freed before another row takes it)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

import sqlalchemy as sa

from sync_pipeline.engine.load_plan import Operation
from sync_pipeline.engine.schema import TableInfo, fk_order

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


def unique_column_sets(info: TableInfo) -> list[tuple[str, ...]]:
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
    takes, the columns it frees (see `write_order` for cycles).

    - a unique value is taken (insert, update) only after the row holding it let it go (delete, update);
    - a row pointing at a parent the load inserts comes after that insert (also for remapped parents: their
      new key is known only then);
    - a row is deleted only after the rows that stop pointing at it (deleted or re-pointed) let go of it, and
      after the rows the load makes point at it, so that `still_referenced` sees them and keeps it.
    """
    unique_sets = {name: unique_column_sets(info) for name, info in infos.items()}
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
        before = o.before
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


def write_order(operations: list[Operation], infos: dict[str, TableInfo]) -> Iterator[tuple[str, str, list[int]]]:
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
        # New rows of a table with a generated key whose reference waits for a remapped row of the same
        # table (a new employee under a new manager whose key the master took): rows with their own keys
        # go first so that the generator hands remapped rows keys past them, but such a row can be
        # written only after its parent's new key is known. It takes a generated key too; its own key is
        # left, never written with the reference still holding the parent's local key, which names
        # whatever row the master holds under it.
        if _generated_keys_for_rows_waiting_on_remapped(operations, waiting, needs, infos):
            continue
        # A cycle: unique values rotated among rows of one table (two contacts swap their e-mail addresses),
        # so every row holds the value another takes. Updates that take such a value in nullable columns
        # first let go of their old value: NULL may repeat in a unique index (an update the writer drops
        # later, its reference pointing at a row that was not synchronised, takes its value back). Then
        # nothing waits for them any more. Likewise a row to be deleted that holds a value a new row takes,
        # while the delete waits for rows that move to that new row (a record made anew under another key,
        # its children moved to it, the old one deleted): it lets go first.
        released: dict[str, list[int]] = defaultdict(list)
        for (op, table), indexes in waiting.items():
            columns = infos[table].table.columns
            for i in indexes:
                taken = takers.get(i)
                if (
                    op in ("update", "delete")
                    and i not in unblocked
                    and taken
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


def _generated_keys_for_rows_waiting_on_remapped(
    operations: list[Operation],
    waiting: dict[tuple[str, str], list[int]],
    needs: dict[int, set[int]],
    infos: dict[str, TableInfo],
) -> list[int]:
    """Turn every waiting insert with its own key that needs (also through other waiting inserts of its
    table) a remapped insert of its table into a remapped insert; returns those turned."""
    converted: list[int] = []
    for (op, table), indexes in waiting.items():
        blocked = {i for i in indexes if operations[i].new_key}
        if op != "insert" or not blocked:
            continue
        grown = True
        while grown:
            grown = False
            for i in indexes:
                if i not in blocked and needs.get(i, set()) & blocked:
                    blocked.add(i)
                    grown = True
        pk = infos[table].pk
        for i in sorted(blocked):
            o = operations[i]
            if not o.new_key:
                o.new_key = True
                o.values = {k: v for k, v in o.values.items() if k not in pk}
                converted.append(i)
    return converted
