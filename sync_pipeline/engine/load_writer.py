"""The load's writer: batches of one table and kind written into the master, with the key map of
remapped rows, what was dropped (and why) and what was applied."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync_pipeline.engine.detect import fetch_rows_by_key, still_referenced
from sync_pipeline.engine.dialects import impl_for
from sync_pipeline.engine.errors import SyncError
from sync_pipeline.engine.faults import checkpoint
from sync_pipeline.engine.load_columns import grouped_by_columns
from sync_pipeline.engine.load_order import unique_column_sets
from sync_pipeline.engine.load_plan import Dropped, Op, Operation, Plan, Source, TableKey
from sync_pipeline.engine.load_verify import WrittenRows
from sync_pipeline.engine.schema import TableInfo, references_to
from sync_pipeline.engine.sequences import advance_past


@dataclass
class AppliedRow:
    change_id: int
    table: str
    key: tuple[Any, ...]
    op: Op
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    source: Source


class Writer:
    """Writes batches of one table and kind, keeps the key map, what was dropped and what was applied."""

    def __init__(self, conn: Connection, plan: Plan, infos: dict[str, TableInfo]) -> None:
        self.conn, self.infos = conn, infos
        self.key_map: dict[TableKey, tuple[Any, ...]] = dict(plan.key_map)
        self.dropped = list(plan.dropped)
        self.dropped_keys: set[TableKey] = set(plan.gone)
        self.applied: list[AppliedRow] = []
        self.written = WrittenRows()  # for `verify_load`
        self.deleted = {(o.table, o.key) for o in plan.operations if o.op == "delete"}
        tables = {o.table for o in plan.operations if o.op == "delete"}
        self.references = references_to(conn, tables) if tables else {}
        self.released: dict[TableKey, tuple[str, ...]] = {}  # rows whose unique values `release` set NULL
        self.operations = plan.operations
        self.remaps = any(o.new_key for o in plan.operations)
        self.unwritten_remapped: set[TableKey] = set()  # new rows whose master key is not known yet

    def drop(self, operation: Operation, why: str) -> None:
        """Leave a write out of the load, with the reason the protocol shows. A row that let go of its unique
        values for this write (`release`) takes them back: left out, it is as it was."""
        self.dropped.append(Dropped(operation.change_id, operation.table, operation.key, why))
        columns = self.released.pop((operation.table, operation.key), None) if operation.key is not None else None
        if columns:
            info, before = self.infos[operation.table], operation.before or {}
            self.conn.execute(
                sa.update(info.table)
                .where(*[info.table.columns[c] == v for c, v in zip(info.pk, operation.key, strict=True)])
                .values({c: before.get(c) for c in columns})
            )
            checkpoint("load_write")

    def _note_unwritten_remapped(self) -> None:
        if self.remaps:  # write_order may turn rows into remapped ones: looked at anew for each batch
            remapped = {(o.table, o.key) for o in self.operations if o.new_key and o.op == "insert"}
            self.unwritten_remapped = remapped - self.key_map.keys()

    def rewrite(self, operation: Operation) -> bool:
        """Point references at remapped parents; False if a parent was dropped (drop this row too).

        A reference to a new row whose master key is not known yet (a cycle of new rows no order can write)
        fails the load: written as it is, the local key would name whatever row the master holds under it."""
        info = self.infos[operation.table]
        # An update may write part of a composite reference: the rest is the master row's.
        row = {**operation.before, **operation.values} if operation.before is not None else operation.values
        for fk in info.foreign_keys:
            parent_info = self.infos.get(fk.parent_table)
            if parent_info is None or not set(fk.columns) & set(operation.values) or not set(fk.columns) <= set(row):
                continue
            parent_key = fk.parent_key(row, parent_info.pk)
            if parent_key is None:
                continue  # it points at a unique column: remapping changes keys, never those values
            mapped = self.key_map.get((fk.parent_table, parent_key))
            if mapped is not None:
                operation.values.update(fk.child_values(mapped, parent_info.pk))
            elif (fk.parent_table, parent_key) in self.dropped_keys:
                return False
            elif (fk.parent_table, parent_key) in self.unwritten_remapped:
                parent = parent_info.key_dict(parent_key)
                raise SyncError(
                    f"table '{operation.table}', row {info.key_dict(operation.key)}: its reference "
                    f"{', '.join(fk.columns)} points at the new row {parent} of "
                    f"'{fk.parent_table}', which gets its key from the master only when it is written, and "
                    "the rows point at each other in a cycle that no order of writes resolves; nothing was written",
                    "break the cycle in the replica (leave one of the references empty), sync, then set it on "
                    "the master",
                )
        return True

    def insert(self, table: str, operations: list[Operation]) -> None:
        conn, info = self.conn, self.infos[table]
        self._note_unwritten_remapped()
        plain: list[Operation] = []
        remapped: list[Operation] = []
        for operation in operations:
            if not self.rewrite(operation):
                self.drop(operation, "its parent row was not synchronised")
                self.dropped_keys.add((table, operation.key))
                continue
            (remapped if operation.new_key else plain).append(operation)
        plain = self._without_missing_parents(table, plain, "orphan_parent")
        for columns, rows in grouped_by_columns(o.values for o in plain):
            impl_for(conn).load_insert(conn, info, columns, rows)
            checkpoint("load_write")
        for o in plain:
            key = info.key_of(o.values)
            if o.key is not None and key != o.key:  # its key holds a remapped parent's: rows under it follow
                self.key_map[(table, o.key)] = key
            self.applied.append(AppliedRow(o.change_id, table, key, "insert", None, o.values, o.source))
            self.written.wrote(table, key, o.values)
        advance_past(conn, info.sequences, [o.values for o in plain])  # before the remapped rows take keys
        for operation in remapped:
            new_key = impl_for(conn).insert_returning_key(conn, info, operation.values)
            checkpoint("load_write")
            self.key_map[(table, operation.key)] = new_key
            after = dict(operation.values) | info.key_dict(new_key)
            self.written.wrote(table, new_key, after)
            self.applied.append(AppliedRow(operation.change_id, table, new_key, "insert", None, after, "remap"))

    def update(self, table: str, operations: list[Operation]) -> None:
        conn, info = self.conn, self.infos[table]
        self._note_unwritten_remapped()
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
            rows = [{**info.key_dict(o.key), **o.values} for o in batch]
            impl_for(conn).load_update(conn, info, columns, rows)
            checkpoint("load_write")
            advance_past(conn, info.sequences, [o.values for o in batch])
            for o in batch:
                self.written.wrote(table, o.key, o.values)
                before = o.before
                after = (dict(before) if before else {}) | o.values
                self.applied.append(AppliedRow(o.change_id, table, o.key, "update", before, after, o.source))

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
                    row = {**(o.before or {}), **o.values}
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
                self.dropped_keys.add((table, o.key))
        return [o for n, o in enumerate(operations) if n not in missing]

    def release(self, table: str, operations: list[Operation]) -> None:
        """Write NULL into the unique columns these updates are about to write, or the nullable unique
        columns of rows about to be deleted (see `write_order`): their old values are free for other rows;
        the updates and deletes themselves follow and are recorded then."""
        info = self.infos[table]
        unique = {c for columns in unique_column_sets(info) for c in columns}
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
            for o in batch:  # the write that follows sets them; if it is dropped, `drop` puts them back
                before = o.before or {}
                self.written.wrote(table, o.key, {c: before.get(c) for c in columns})
                if columns and o.key is not None:
                    self.released[(table, o.key)] = columns

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
                    self.deleted.discard((table, o.key))  # so its parents see it stay
            deletes = [o for o in deletes if o.key not in referenced]
        if deletes:
            impl_for(conn).load_delete(conn, info, [o.key for o in deletes])
            checkpoint("load_write")
        for o in deletes:
            self.written.deleted(table, o.key)
        self.applied.extend(AppliedRow(o.change_id, table, o.key, "delete", o.before, None, o.source) for o in deletes)
