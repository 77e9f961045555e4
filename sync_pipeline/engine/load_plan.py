"""The load's plan: detected changes and their decisions turned into master writes (docs: the decision
table of docs/sync_rules.md §4), as typed operations with what the optimistic check expects of each row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from sync_pipeline.engine.detect import Detected
from sync_pipeline.engine.new_keys import key_follows_new_parent
from sync_pipeline.engine.resolve import CurrentDecision
from sync_pipeline.engine.schema import TableInfo

Op = Literal["insert", "update", "delete"]
Source = Literal["change", "decision", "remap", "orphan_parent"]
TableKey = tuple[str, tuple[Any, ...]]


@dataclass(frozen=True)
class MasterRow:
    """The optimistic check expects the master row detection saw, unchanged."""

    row: dict[str, Any]


@dataclass(frozen=True)
class NoRow:
    """The optimistic check expects no master row under the key (an insert: its failure on the primary key
    sends the session back to detection)."""


@dataclass(frozen=True)
class Unchecked:
    """Nothing to check: an insert under a key the master assigns."""


Expectation = MasterRow | NoRow | Unchecked
NO_ROW = NoRow()
UNCHECKED = Unchecked()


def seen(row: dict[str, Any] | None) -> MasterRow | NoRow:
    """What detection saw of the master row: the row, or none."""
    return NoRow() if row is None else MasterRow(row)


@dataclass
class Operation:
    change_id: int
    table: str
    op: Op
    key: tuple[Any, ...]  # local key (insert) or master key (update/delete)
    values: dict[str, Any]
    expected: Expectation
    source: Source
    new_key: bool = False  # insert under a key the master assigns

    @property
    def before(self) -> dict[str, Any] | None:
        """The master row detection saw, where the check compares one."""
        return self.expected.row if isinstance(self.expected, MasterRow) else None


class Dropped(NamedTuple):
    """A change left out of the load, with the reason the protocol shows."""

    change_id: int
    table: str
    key: tuple[Any, ...]
    reason: str


@dataclass
class Plan:
    operations: list[Operation] = field(default_factory=list)
    key_map: dict[TableKey, tuple[Any, ...]] = field(default_factory=dict)
    dropped: list[Dropped] = field(default_factory=list)
    # Local rows that will not exist in the master under their key: rows referencing them are dropped too.
    gone: set[TableKey] = field(default_factory=set)
    recreated: set[TableKey] = field(default_factory=set)


def _choice(decision: CurrentDecision | None, name: str | None) -> tuple[str, Any]:
    assert decision is not None
    if name is not None and name in decision.fields:
        chosen = decision.fields[name]
        return chosen.choice, chosen.value
    return decision.row or "master", None


PARENT_DELETED = "its parent was deleted on the master"


def _insert(change_id: int, d: Detected, source: Source) -> Operation:
    """The local row inserted under its own key, which the master must not hold."""
    return Operation(change_id, d.change.table, "insert", d.change.key, dict(d.change.local or {}), NO_ROW, source)


def _remapped(change_id: int, d: Detected, info: TableInfo) -> Operation:
    """The local row inserted under a key the master assigns (its own is taken there)."""
    values = {k: v for k, v in (d.change.local or {}).items() if k not in info.pk}
    return Operation(change_id, d.change.table, "insert", d.change.key, values, UNCHECKED, "remap", new_key=True)


def _update(
    change_id: int,
    d: Detected,
    source: Source,
    values: dict[str, Any] | None = None,
    key: tuple[Any, ...] | None = None,
) -> Operation:
    """An update of the master row detection saw: the local values of the fields to apply, or `values`."""
    if values is None:
        local = d.change.local or {}
        values = {f: local[f] for f in d.apply_fields}
    return Operation(
        change_id, d.change.table, "update", d.change.key if key is None else key, values, seen(d.master), source
    )


def _delete(change_id: int, d: Detected, source: Source) -> Operation:
    return Operation(change_id, d.change.table, "delete", d.change.key, {}, seen(d.master), source)


def _drop(plan: Plan, change_id: int, d: Detected, why: str) -> None:
    plan.dropped.append(Dropped(change_id, d.change.table, d.change.key, why))


def build_plan(items: list[tuple[int, Detected, CurrentDecision | None]], infos: dict[str, TableInfo]) -> Plan:
    """Turn detected changes and their decisions into master writes (§5's decision table)."""
    plan = Plan()
    for change_id, d, decision in items:
        change, info = d.change, infos[d.change.table]
        local = change.local or {}
        if d.action == "skip":
            if d.target_key is not None and d.target_key != change.key:
                plan.key_map[(change.table, change.key)] = d.target_key  # rows under it point at the master's
            continue
        if d.action == "apply":
            if change.op == "insert":
                plan.operations.append(_insert(change_id, d, "change"))
            elif change.op == "update":
                plan.operations.append(_update(change_id, d, "change"))
            else:
                plan.operations.append(_delete(change_id, d, "change"))
            continue
        if d.action == "remap":
            plan.operations.append(_remapped(change_id, d, info))
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
                plan.operations.append(_update(change_id, d, "decision", values))
        elif kind == "update_delete":
            if _choice(decision, None)[0] == "local":
                if d.detail.get("parent_table"):  # the master deleted its parent too
                    if not d.detail.get("parent_row"):
                        _drop(plan, change_id, d, PARENT_DELETED)
                        continue
                    _recreate_parent(plan, change_id, d, infos)
                if (change.table, change.key) in plan.recreated:
                    continue  # already brought back as the parent of another row
                plan.recreated.add((change.table, change.key))
                plan.operations.append(_insert(change_id, d, "decision"))
        elif kind == "delete_update":
            if _choice(decision, None)[0] == "local":
                plan.operations.append(_delete(change_id, d, "decision"))
        elif kind in ("insert_insert", "duplicate"):
            target = d.target_key or change.key
            if kind == "duplicate" or target != change.key:
                plan.key_map[(change.table, change.key)] = target
            values = {n: local[n] for n in names if _choice(decision, n)[0] == "local"}
            if values and not _decided_parent(plan, change_id, d, infos, values):
                continue
            if values:
                plan.operations.append(_update(change_id, d, "decision", values, key=target))
            elif kind == "insert_insert":
                _drop(plan, change_id, d, "the master's row was kept")
            else:
                _drop(plan, change_id, d, "the master's row is the same record")
        elif kind == "orphan":
            if _choice(decision, None)[0] == "local" and d.detail.get("parent_row"):
                _recreate_parent(plan, change_id, d, infos)
                if change.op == "insert" and d.master is not None and info.generated_pk:
                    # Its generated key is taken on the master (it would have been remapped): a new key.
                    plan.operations.append(_remapped(change_id, d, info))
                elif change.op == "insert":
                    plan.operations.append(_insert(change_id, d, "decision"))
                else:
                    plan.operations.append(_update(change_id, d, "decision"))
            else:
                _drop(plan, change_id, d, PARENT_DELETED)
                if change.op == "insert":
                    plan.gone.add((change.table, change.key))
    _uncheck_keys_of_new_parents(plan, infos)
    return plan


def _uncheck_keys_of_new_parents(plan: Plan, infos: dict[str, TableInfo]) -> None:
    """An insert whose key holds the key of a row the master assigns anew (a remapped order's line) is not
    checked under its local key: a master row there is another record, and the row's own key is new."""
    new_keys: set[TableKey] = {k for k, target in plan.key_map.items() if target != k[1]}  # and duplicates'
    for o in plan.operations:  # parents before their children, as detection ordered the changes
        if o.op != "insert" or o.key is None:
            continue
        if o.new_key:
            new_keys.add((o.table, o.key))
        elif new_keys and key_follows_new_parent(infos[o.table], o.values, new_keys, infos):
            new_keys.add((o.table, o.key))
            o.expected = UNCHECKED


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
            _drop(plan, change_id, d, PARENT_DELETED)
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
        Operation(change_id, parent_table, "insert", key, dict(d.detail["parent_row"]), NO_ROW, "orphan_parent")
    )
