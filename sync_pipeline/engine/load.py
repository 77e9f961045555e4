"""The load (docs/sync_rules.md §5): every approved change of a session in one transaction of the master.

Writes go in an order that keeps every foreign key and unique index valid at each statement (parents
before children for inserts, children before parents for deletes, a unique value freed before another row
takes it: see `load_order`). Before writing, every row the load touches is re-read (locked on PostgreSQL)
and compared with what detection saw. A row the master changed in between is not overwritten: `StaleRows`
names the changes that must go back to detection.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.engine import Connection

from sync_pipeline.engine.detect import fetch_rows_by_key
from sync_pipeline.engine.dialects import impl_for
from sync_pipeline.engine.errors import SyncError
from sync_pipeline.engine.load_columns import writable
from sync_pipeline.engine.load_order import unique_column_sets, write_order
from sync_pipeline.engine.load_plan import Dropped, MasterRow, NoRow, Operation, Plan, TableKey, build_plan
from sync_pipeline.engine.load_verify import verify_load
from sync_pipeline.engine.load_writer import AppliedRow, Writer
from sync_pipeline.engine.progress import report
from sync_pipeline.engine.schema import TableInfo, normalize_row


class StaleRows(SyncError):
    """Rows the master changed after detection; their changes go back to detection."""

    def __init__(self, change_ids: list[int]) -> None:
        self.change_ids = change_ids
        super().__init__(f"{len(change_ids)} row(s) changed on the master after detection")


@dataclass
class LoadResult:
    applied: list[AppliedRow]
    key_map: dict[TableKey, tuple[Any, ...]]
    dropped: list[Dropped]
    verified: dict[str, Any] = field(default_factory=dict)  # what `verify_load` compared (load_verify)


def check_unchanged(conn: Connection, plan: Plan, infos: dict[str, TableInfo]) -> list[int]:
    """Change ids whose master rows differ from what detection saw (rows are locked on PostgreSQL)."""
    by_table: dict[str, list[Operation]] = defaultdict(list)
    for operation in plan.operations:
        # An insert expecting its key free needs no read: if a writer took the key meanwhile, the insert
        # fails on the primary key and the whole session is detected again (load_with_redetection).
        if isinstance(operation.expected, MasterRow) or (
            isinstance(operation.expected, NoRow) and operation.op != "insert"
        ):
            by_table[operation.table].append(operation)
    stale: list[int] = []
    for table, operations in by_table.items():
        info = infos[table]
        operations = _may_differ(conn, info, operations)
        if not operations:
            continue
        # Rows as the driver gives them nearly always equal detection's normalised snapshot (read by the same
        # driver); only where one does not is it normalised before it counts as changed.
        current = fetch_rows_by_key(conn, info, [o.key for o in operations], for_update=True, normalized=False)
        normalized: dict[tuple[Any, ...], dict[str, Any]] | None = None
        for operation in operations:
            if current.get(operation.key) == operation.before:
                continue
            if _only_trigger_columns_differ(info, operation, current.get(operation.key)):
                continue
            if normalized is None:
                normalized = {}
                for row in current.values():
                    normal = normalize_row(row, info.table)
                    normalized[info.key_of(normal)] = normal
            if normalized.get(operation.key) != operation.before and not _only_trigger_columns_differ(
                info, operation, normalized.get(operation.key)
            ):
                stale.append(operation.change_id)
    return sorted(set(stale))


def _may_differ(conn: Connection, info: TableInfo, operations: list[Operation]) -> list[Operation]:
    """The operations whose rows the Python comparison below must look at. Where the database joins the
    expected rows with the master (`DialectImpl.rows_that_may_differ`, which also locks them), only those
    it finds changed or gone; an operation expecting no row is always looked at."""
    expecting = [o for o in operations if o.before is not None]
    columns = list(dict.fromkeys([*info.pk, *(c for o in expecting for c in o.before or {})]))
    columns = [c for c in columns if c in info.table.columns]
    if not expecting:
        return operations
    differing = impl_for(conn).rows_that_may_differ(
        conn, info, columns, [{**(o.before or {}), **info.key_dict(o.key)} for o in expecting]
    )
    if differing is None:
        return operations
    return [o for o in operations if o.before is None] + [expecting[n] for n in sorted(differing)]


def _only_trigger_columns_differ(info: TableInfo, operation: Operation, current: dict[str, Any] | None) -> bool:
    """A row whose only changes since detection are in columns the master's triggers maintain (a
    `last_update`, a counter kept from another table) and the operation does not write: a side effect
    of other writes, on which no decision of this row was based. The columns keys and references use
    always count (the write order is planned on them)."""
    before = operation.before
    if not info.maintained_columns or current is None or before is None:
        return False
    differing = {c for c in current if current[c] != before.get(c)}
    planned_on = set(info.pk) | {c for fk in info.foreign_keys for c in fk.columns}
    planned_on |= {c for columns in unique_column_sets(info) for c in columns}
    ignorable = info.maintained_columns - set(operation.values) - planned_on
    return bool(differing) and differing <= ignorable


def execute_plan(conn: Connection, plan: Plan, infos: dict[str, TableInfo]) -> LoadResult:
    """Write the plan into the master (inside the caller's transaction). Raises StaleRows first if needed.

    The database checks foreign keys and unique indexes at every statement, not at the commit: the writes
    go in an order in which every row's parent exists when the row is written and every unique value
    (natural key, any unique constraint or index) is freed before another row takes it. See `load_order`.
    """
    stale = check_unchanged(conn, plan, infos)
    if stale:
        raise StaleRows(stale)
    for operation in plan.operations:
        operation.values = writable(infos[operation.table], operation.op, operation.values)
    writer = Writer(conn, plan, infos)
    written, total = 0, len(plan.operations)
    for op, table, indexes in write_order(plan.operations, infos):
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


def advance_sequence(conn: Connection, info: TableInfo) -> None:
    """Move the generator of a serial/identity key past the table's highest key (reads the whole key
    column's maximum: for preparing masters in tests and tools; the load uses `advance_past`)."""
    impl_for(conn).advance_sequence_to_max(conn, info)


__all__ = ["LoadResult", "Operation", "Plan", "StaleRows", "advance_sequence", "build_plan", "execute_plan"]
