"""Which new rows get their primary key from the master at load rather than keeping the replica's.

A local insert keeps its generated key where the master has it free, and is remapped where the master
took it (detection). Two more cases: a key far beyond the master's own (a replica's generator cannot have
made it; kept, it would move the master's generator there), and a key that holds a remapped row's key
(the line `(order_id, line_no)` of a remapped order), which follows its parent's new key.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync_pipeline.engine.dialects import impl_for
from sync_pipeline.engine.errors import BadInputError
from sync_pipeline.engine.extract import ChangeSet, RowChange
from sync_pipeline.engine.schema import ForeignKey, TableInfo

if TYPE_CHECKING:  # detect imports this module
    from sync_pipeline.engine.detect import Detected

# How far past the master's highest key a local insert's generated key may lie and still be kept. A
# replica's own generator starts at the highest key it was given, so honest keys lie within the number of
# its inserts of this one; a key far beyond it would move the master's generator there for every later
# insert (to the end of its range, and the master's applications could insert no more).
KEY_SLACK = 10_000
FAR_KEY = "its key lies far beyond the master's keys: the master assigns one"


def highest_own_key(conn: Connection, info: TableInfo, changes: list[RowChange]) -> int | None:
    """The highest generated key a local insert into the table keeps (above it the master assigns one),
    or None where the table has no generated key or nothing is inserted."""
    inserts = sum(1 for c in changes if c.op == "insert")
    if not info.generated_pk or not inserts:
        return None
    column = info.table.columns[info.pk[0]]
    top = conn.execute(sa.select(sa.func.max(column))).scalar()
    return (int(top) if top is not None else 0) + inserts + KEY_SLACK


def _parents_in_key(
    info: TableInfo, row: Mapping[str, Any], infos: Mapping[str, TableInfo]
) -> Iterator[tuple[ForeignKey, TableInfo, tuple[Any, ...]]]:
    """(reference, parent table, the parent's key) for each reference that is part of the row's own primary
    key and names a module table's primary key: the references through which a new parent key reaches the
    row's key."""
    for fk in info.foreign_keys:
        parent = infos.get(fk.parent_table)
        if parent is None or not set(fk.columns) & set(info.pk) or not set(fk.columns) <= set(row):
            continue
        if (key := fk.parent_key(row, parent.pk)) is not None:
            yield fk, parent, key


def key_follows_new_parent(
    info: TableInfo, row: Mapping[str, Any], new_keys: set[tuple[str, tuple[Any, ...]]], infos: Mapping[str, TableInfo]
) -> bool:
    """Whether a new row's primary key holds a reference to a row in `new_keys` (rows whose master key is
    assigned at load: remapped, or following such a row themselves), like the line `(order_id, line_no)` of
    a remapped order: the row's own master key is then known only at load, and no master row can hold it."""
    return any((fk.parent_table, key) in new_keys for fk, _parent, key in _parents_in_key(info, row, infos))


def refuse_far_sequence_values(conn: Connection, changes: ChangeSet, infos: Mapping[str, TableInfo]) -> None:
    """A local value of a column a sequence feeds (not the key: that one is remapped), far beyond what the
    sequence handed out, is bad input. Written, it would move the sequence there (`advance_past`), and
    every later row of the master's applications would get a number from the end of its range."""
    impl = impl_for(conn)
    by_table: dict[str, list[RowChange]] = {}
    for change in changes.changes:
        if change.op != "delete":
            by_table.setdefault(change.table, []).append(change)
    for table, table_changes in by_table.items():
        info = infos[table]
        for column, sequence in info.sequences.items():
            if info.generated_pk and column in info.pk:
                continue
            values = [
                value
                for c in table_changes
                if (c.op == "insert" or column in c.changed)
                and isinstance(value := (c.local or {}).get(column), int)
                and not isinstance(value, bool)
            ]
            if not values or (position := impl.sequence_position(conn, sequence)) is None:
                continue
            highest = max(position, 0) + len(values) + KEY_SLACK
            if max(values) > highest:
                raise BadInputError(
                    f"table '{table}', column '{column}': the local value {max(values)} lies far beyond the "
                    f"numbers the master's sequence has handed out ({position}); written, it would move the "
                    "sequence there for every later row",
                    "enter a number near the master's in the replica, or leave the column empty where the "
                    "master fills it (NOT NULL with a default); then sync again",
                )


def moved_key(
    info: TableInfo,
    row: Mapping[str, Any],
    moved: Mapping[tuple[str, tuple[Any, ...]], tuple[Any, ...]],
    infos: Mapping[str, TableInfo],
) -> tuple[Any, ...] | None:
    """The key a new row takes on the master when its key holds the key of a row the master knows under
    another one (a duplicate by natural key, or such a row's own new row: `moved`), e.g. the line `(3, 1)`
    of the local order 3 that is the master's order 4: `(4, 1)`. None where the key stays."""
    values = dict(row)
    for fk, parent, key in _parents_in_key(info, row, infos):
        if (target := moved.get((fk.parent_table, key))) is not None:
            values.update(fk.child_values(target, parent.pk))
    if not set(info.pk) <= set(values):
        return None
    new = info.key_of(values)
    return new if new != info.key_of(row) else None


def moved_keys(
    info: TableInfo,
    changes: list[RowChange],
    follows: set[tuple[Any, ...]],
    moved: Mapping[tuple[str, tuple[Any, ...]], tuple[Any, ...]],
    infos: Mapping[str, TableInfo],
) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """Local key -> the key each new row of the table takes on the master (`moved_key`), where it moves."""
    if not moved:
        return {}
    found = {}
    for c in changes:
        if c.op == "insert" and c.key not in follows and (key := moved_key(info, c.local or {}, moved, infos)):
            found[c.key] = key
    return found


def note_key(
    d: Detected,
    follows: set[tuple[Any, ...]],
    effective: Mapping[tuple[Any, ...], tuple[Any, ...]],
    new_keys: set[tuple[str, tuple[Any, ...]]],
    moved: dict[tuple[str, tuple[Any, ...]], tuple[Any, ...]],
) -> None:
    """After a change is classified, note where its row's master key stands
    for the rows under it: assigned at load (`new_keys`: remapped, or following a new parent), or another
    key the master knows it under (`moved`: a duplicate by natural key, or a row whose key holds one's)."""
    row = (d.change.table, d.change.key)
    if d.action == "remap" or (d.action == "apply" and d.change.key in follows):
        new_keys.add(row)
        if d.action == "apply":
            d.note = "its key holds its parent's new key"
    elif (key := effective.get(d.change.key)) is not None:
        moved[row] = key
        if d.master is not None:
            d.target_key = key  # the master's row it was compared with
    elif d.kind == "duplicate" and d.target_key is not None and d.target_key != d.change.key:
        moved[row] = d.target_key
