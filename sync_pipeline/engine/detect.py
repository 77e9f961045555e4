"""Three-way, field-level conflict detection against the master (docs/sync_rules.md §3).

For every locally changed row: base B (from the replica's log), local L, master M (fetched now, by
key, in batches). A master change of a field is M != B. What detection saw of the master is kept
with each change so that the load can check that the master did not move in between.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync_pipeline.engine.clock import NONE, changed_after_checkout, fetch_master_times
from sync_pipeline.engine.dialects import impl_for
from sync_pipeline.engine.extract import ChangeSet, RowChange
from sync_pipeline.engine.faults import checkpoint
from sync_pipeline.engine.new_keys import FAR_KEY, highest_own_key, key_follows_new_parent, moved_keys, note_key
from sync_pipeline.engine.progress import report
from sync_pipeline.engine.schema import Reference, TableInfo, normalizer, references_to
from sync_pipeline.engine.settings import SyncSettings
from sync_pipeline.engine.tombstones import NO_TOMBSTONE_REASON, SOURCE_TOMBSTONE, latest_tombstones

BATCH = 500

# Master rows already read in this process, per table: (the keys looked up, the rows found, their clock).
Prefetched = dict[
    str,
    tuple[set[tuple[Any, ...]], dict[tuple[Any, ...], dict[str, Any]], dict[tuple[Any, ...], dict[str, str]]],
]

Action = Literal["apply", "skip", "remap", "conflict"]
KINDS = ("update_update", "update_delete", "delete_update", "insert_insert", "duplicate", "orphan")
# Conflicts whose decision 'local' writes local field values (maybe a reference) into an existing master row.
DECIDED_WRITES = ("update_update", "insert_insert", "duplicate")


@dataclass(slots=True)
class FieldDiff:
    name: str
    base: Any
    local: Any
    master: Any


@dataclass(slots=True)
class Detected:
    change: RowChange
    module: str
    action: Action
    master: dict[str, Any] | None  # the master row detection compared against (None: absent)
    apply_fields: list[str] = field(default_factory=list)  # local fields written without conflict
    kind: str | None = None
    fields: list[FieldDiff] = field(default_factory=list)
    master_times: dict[str, str] = field(default_factory=dict)
    # duplicate: the master key the local row is; orphan: the missing parent and its base row.
    target_key: tuple[Any, ...] | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def fetch_rows_by_key(
    conn: Connection,
    info: TableInfo,
    keys: Iterable[tuple[Any, ...]],
    columns: Sequence[str] | None = None,
    for_update: bool = False,
    normalized: bool = True,
) -> dict[tuple[Any, ...], dict[str, Any]]:
    """Master rows by primary key (or any unique column list), in batches.

    `normalized=False` gives the rows as the driver returned them, keyed by the raw key values: cheaper,
    for a caller that falls back to `normalize_row` where a raw row does not compare equal."""
    columns = tuple(columns or info.pk)
    key_list = list(dict.fromkeys(keys))
    found: dict[tuple[Any, ...], dict[str, Any]] = {}
    table = info.table
    impl = impl_for(conn)
    # Rows as plain tuples zipped with the names: a mapping per row costs more than the row's values.
    names = [c.key for c in table.columns]
    normalizers = [normalizer(c) if normalized else None for c in table.columns]
    key_at = [names.index(c) for c in columns]
    batch = impl.lookup_batch(len(columns))
    for start in range(0, len(key_list), batch):
        chunk = key_list[start : start + batch]
        if len(columns) == 1:
            condition = impl.in_list(table.columns[columns[0]], [k[0] for k in chunk])
        else:
            condition = sa.tuple_(*[table.columns[c] for c in columns]).in_(chunk)
        query = sa.select(table).where(condition)
        if for_update:
            query = impl.lock_rows(query)
        for values in conn.execute(query):
            if normalized:
                values = [f(v) for f, v in zip(normalizers, values, strict=True)]  # type: ignore[misc]
            found[tuple(values[i] for i in key_at)] = dict(zip(names, values, strict=True))
    return found


def detect_conflicts(
    conn: Connection,
    changes: ChangeSet,
    infos: dict[str, TableInfo],
    settings: SyncSettings,
    replica_rows: Any = None,
    prefetched: Prefetched | None = None,
    checked_out_at: str | None = None,
) -> list[Detected]:
    """Classify every change (§5 table).

    `replica_rows` is no longer read: a parent an orphan needs is re-created from the master's tombstone of
    it (engine/tombstones.py), never from the replica's row. `checked_out_at`, with master change capture
    on, makes every field the master changed after the checkout a master change, whatever base the
    replica's log claims (the log is in the worker's hands).
    """
    by_table: dict[str, list[RowChange]] = defaultdict(list)
    for change in changes.changes:
        by_table[change.table].append(change)
    local_inserts: dict[str, list[RowChange]] = defaultdict(list)  # by table
    for c in changes.changes:
        if c.op == "insert":
            local_inserts[c.table].append(c)
    local_deletes = {(c.table, c.key) for c in changes.changes if c.op == "delete"}
    # Rows the replica deletes, or re-points elsewhere, no longer hold on to the row they referenced.
    fk_columns = {name: {col for fk in info.foreign_keys for col in fk.columns} for name, info in infos.items()}
    let_go = local_deletes | {
        (c.table, c.key) for c in changes.changes if c.op == "update" and set(c.changed) & fk_columns[c.table]
    }
    deleting = {c.table for c in changes.changes if c.op == "delete"}
    references = references_to(conn, deleting) if deleting else {}

    results: list[Detected] = []
    new_keys: set[tuple[str, tuple[Any, ...]]] = set()  # rows whose master key is assigned at load
    moved: dict[tuple[str, tuple[Any, ...]], tuple[Any, ...]] = {}  # rows the master knows under another key
    for table, table_changes in by_table.items():
        info = infos[table]
        module = settings.module_of(table)
        # New rows whose key holds a new parent's key (a remapped order's lines): compared with no master row.
        follows = {
            c.key
            for c in table_changes
            if c.op == "insert" and new_keys and key_follows_new_parent(info, c.local or {}, new_keys, infos)
        }
        known_keys, known_rows, known_times = (prefetched or {}).get(table, (set(), {}, {}))
        masters = dict(known_rows)
        masters.update(fetch_rows_by_key(conn, info, [c.key for c in table_changes if c.key not in known_keys]))
        after_checkout: dict[tuple[Any, ...], frozenset[str]] = {}
        if checked_out_at is not None and settings.master_change_capture:
            times = dict(known_times)
            times.update(
                fetch_master_times(
                    conn, info, [c.key for c in table_changes if c.op != "insert" and c.key not in known_keys]
                )
            )
            after_checkout = changed_after_checkout(times, info, checked_out_at)
        natural = settings.table(table).natural_key or []
        natural_hits: dict[tuple[Any, ...], dict[str, Any]] = {}
        natural_notes: dict[tuple[Any, ...], str] = {}
        if natural:
            wanted = [
                tuple(c.local[n] for n in natural)  # type: ignore[index]
                for c in table_changes
                if c.op == "insert" and all(c.local[n] is not None for n in natural)  # type: ignore[index]
            ]
            natural_hits = fetch_rows_by_key(conn, info, wanted, natural)
            # Equal as the database compares the columns (a case-insensitive collation), not only as Python.
            natural_hits, natural_notes = impl_for(conn).match_natural_keys(conn, info, natural, wanted, natural_hits)
        highest = highest_own_key(conn, info, table_changes)
        for key in follows:
            masters.pop(key, None)  # compared with no master row (see `follows`)
        # New rows whose key holds a duplicate's key: compared with the master's row under the key they take.
        effective = moved_keys(info, table_changes, follows, moved, infos)
        under = fetch_rows_by_key(conn, info, list(effective.values())) if effective else {}
        masters.update({local: under[key] for local, key in effective.items() if key in under})
        for local in (local for local, key in effective.items() if key not in under):
            masters.pop(local, None)
        detected = [
            _classify(
                c,
                module,
                info,
                masters.get(c.key),
                natural,
                natural_hits,
                after_checkout.get(c.key, NONE),
                highest=highest,
            )
            for c in table_changes
        ]
        for d in detected:
            note_key(d, follows, effective, new_keys, moved)
        for d in (d for d in detected if d.kind == "duplicate" and natural_notes and d.change.local):
            d.note = natural_notes.get(tuple(d.change.local[n] for n in natural), d.note)  # type: ignore[index]
        _find_orphans(conn, detected, info, infos, local_inserts)
        _find_referenced_deletes(conn, detected, info, references.get(table, []), let_go)
        detected, new_records = _release_natural_keys(
            detected, info, masters, natural, natural_hits, after_checkout, highest
        )
        _find_orphans(conn, new_records, info, infos, local_inserts)
        conflicting = [d for d in detected if d.action == "conflict"]
        times = fetch_master_times(conn, info, [d.target_key or d.change.key for d in conflicting])
        for d in conflicting:
            d.master_times = times.get(d.target_key or d.change.key, {})
        results.extend(detected)
        checkpoint("detect")
        report("detect", len(results), len(changes.changes))
    return results


def _diff(columns: Iterable[str], base: dict | None, local: dict | None, master: dict | None) -> list[FieldDiff]:
    return [
        FieldDiff(
            c,
            None if base is None else base[c],
            None if local is None else local[c],
            None if master is None else master[c],
        )
        for c in columns
    ]


def _classify(
    change: RowChange,
    module: str,
    info: TableInfo,
    master: dict[str, Any] | None,
    natural: list[str],
    natural_hits: dict[tuple[Any, ...], dict[str, Any]],
    clocked: frozenset[str] = NONE,
    released: frozenset[tuple[Any, ...]] = frozenset(),
    highest: int | None = None,
) -> Detected:
    """`clocked`: the fields the master's clock shows changed after the checkout (checked, not believed).
    `highest`: the highest generated key a local insert may keep (`new_keys.highest_own_key`)."""
    base, local = change.base, change.local
    if change.op == "update":
        assert base is not None and local is not None
        if master is None:
            return Detected(
                change, module, "conflict", None, kind="update_delete", fields=_diff(change.changed, base, local, None)
            )
        master_changed = {c for c in info.columns if master[c] != base[c] or c in clocked}
        conflict = [c for c in change.changed if c in master_changed and master[c] != local[c]]
        apply = [c for c in change.changed if c not in conflict and master[c] != local[c]]
        if conflict:
            return Detected(
                change,
                module,
                "conflict",
                master,
                apply_fields=apply,
                kind="update_update",
                fields=_diff(conflict, base, local, master),
            )
        if apply:
            return Detected(change, module, "apply", master, apply_fields=apply)
        return Detected(change, module, "skip", master, note="the master already holds the same values")
    if change.op == "delete":
        assert base is not None
        if master is None:
            return Detected(change, module, "skip", None, note="deleted on both sides")
        master_changed = [
            c for c in info.columns if c not in info.generated_columns and (master[c] != base[c] or c in clocked)
        ]
        if master_changed:
            return Detected(
                change,
                module,
                "conflict",
                master,
                kind="delete_update",
                fields=_diff(master_changed, base, None, master),
            )
        return Detected(change, module, "apply", master)

    assert local is not None
    # Computed columns follow from the others: never a difference of their own (see extract).
    value_columns = [c for c in info.columns if c not in info.pk and c not in info.generated_columns]
    if natural and all(local[n] is not None for n in natural):
        hit = natural_hits.get(tuple(local[n] for n in natural))
        if hit is not None and info.key_of(hit) not in released:
            # The same record by its natural key (under another key, or by chance under the same one).
            differing = [c for c in value_columns if hit[c] != local[c]]
            if not differing and info.key_of(hit) == change.key:
                return Detected(change, module, "skip", hit, note="the master already holds the same row")
            return Detected(
                change,
                module,
                "conflict",
                hit,
                kind="duplicate",
                target_key=info.key_of(hit),
                fields=_diff(differing, None, local, hit),
            )
    if master is None:
        if highest is not None and isinstance(change.key[0], int) and change.key[0] > highest:
            return Detected(change, module, "remap", None, note=FAR_KEY)
        return Detected(change, module, "apply", None)
    if info.generated_pk:
        return Detected(change, module, "remap", master, note="key taken on the master: a new key is assigned")
    differing = [c for c in value_columns if master[c] != local[c]]
    if not differing:
        return Detected(change, module, "skip", master, note="the master already holds the same row")
    return Detected(
        change, module, "conflict", master, kind="insert_insert", fields=_diff(differing, None, local, master)
    )


def _release_natural_keys(
    detected: list[Detected],
    info: TableInfo,
    masters: dict[tuple[Any, ...], dict[str, Any]],
    natural: list[str],
    natural_hits: dict[tuple[Any, ...], dict[str, Any]],
    after_checkout: dict[tuple[Any, ...], frozenset[str]],
    highest: int | None = None,
) -> tuple[list[Detected], list[Detected]]:
    """A new local row whose natural key a master row holds that the replica deletes, or gives another
    natural key, is a new record, not a duplicate of that row: the load frees the key first. Only where
    that write is sure to be made: a delete or update that applies (after `_find_orphans` and
    `_find_referenced_deletes`, which turn some into conflicts), or a field written beside an update_update
    whatever its decision. (A delete that is a conflict may be decided 'master': the row keeps its key and
    the new row is its duplicate.) Returns the changes and the ones classified anew."""
    released = frozenset(
        d.change.key
        for d in detected
        if (d.change.op == "delete" and d.action == "apply")
        or (
            d.change.op == "update"
            and (d.action == "apply" or d.kind == "update_update")
            and set(natural) & set(d.apply_fields)
        )
    )
    if not released or not natural:
        return detected, []
    out, again = [], []
    for d in detected:
        if d.kind == "duplicate" and d.target_key in released:
            clocked = after_checkout.get(d.change.key, NONE)
            master = masters.get(d.change.key)
            d = _classify(d.change, d.module, info, master, natural, natural_hits, clocked, released, highest)
            again.append(d)
        out.append(d)
    return out, again


def _find_orphans(
    conn: Connection,
    detected: list[Detected],
    info: TableInfo,
    infos: dict[str, TableInfo],
    local_inserts: dict[str, list[RowChange]],
) -> None:
    """Inserts (and updates of a reference) pointing at a parent the master no longer has.

    Conflicts whose decision may write the local row's reference (update_delete re-inserts the row;
    update_update, insert_insert and duplicate write the local value of a reference field) stay what they
    are; they get the missing parent in `detail`, so that the load brings it back (or drops the write) if
    the local side wins.
    """
    for fk in info.foreign_keys:
        candidates: list[tuple[Detected, tuple[Any, ...]]] = []
        # What the replica's new parents hold in the referenced columns (the key, or a unique `code`).
        inserted = {tuple((c.local or {}).get(p) for p in fk.parent_columns) for c in local_inserts[fk.parent_table]}
        for d in detected:
            change = d.change
            if change.op == "delete":
                continue
            if d.kind in DECIDED_WRITES:
                if not set(fk.columns) & ({f.name for f in d.fields} | set(d.apply_fields)):
                    continue
            elif d.kind != "update_delete" and (  # a row the master deleted comes back if the local side wins
                d.action not in ("apply", "remap")
                or (change.op == "update" and not set(fk.columns) & set(d.apply_fields))
            ):
                continue
            assert change.local is not None
            parent_key = tuple(change.local[c] for c in fk.columns)
            if any(v is None for v in parent_key) or parent_key in inserted:
                continue
            candidates.append((d, parent_key))
        if not candidates:
            continue
        parent_info = infos.get(fk.parent_table)
        if parent_info is None:
            parent_info = TableInfo(info.table.metadata.tables[fk.parent_table], fk.parent_columns, False)
        present = fetch_rows_by_key(conn, parent_info, [k for _, k in candidates], fk.parent_columns)
        missing = [k for _, k in candidates if k not in present]
        by_key = tuple(parent_info.pk) == fk.parent_columns
        deleted_at = fetch_master_times(conn, parent_info, missing) if by_key else {}
        # The parent is brought back only from the master's own image of it, never from the replica's row.
        tombstones = latest_tombstones(conn, parent_info, missing) if by_key and fk.parent_table in infos else {}
        for d, parent_key in candidates:
            if parent_key in present:
                continue
            tombstone = tombstones.get(parent_key)
            parent: dict[str, Any] = {
                "parent_table": fk.parent_table,
                "parent_key": dict(zip(fk.parent_columns, parent_key, strict=True)),
                "parent_row": tombstone.row if tombstone else None,
                "parent_deleted_at": deleted_at.get(parent_key, {}).get("*"),
            }
            if tombstone is not None:
                parent.update(
                    parent_source=SOURCE_TOMBSTONE,
                    parent_deleted_at=tombstone.deleted_at,
                    parent_deleted_by=tombstone.deleted_by,
                )
            else:
                parent["parent_missing"] = NO_TOMBSTONE_REASON
            if d.kind == "update_delete" or d.kind in DECIDED_WRITES:
                d.detail = {**d.detail, **parent}
                continue
            d.action, d.kind = "conflict", "orphan"
            d.fields = _diff(fk.columns, d.change.base, d.change.local, d.master)
            d.detail = parent
            d.apply_fields = d.apply_fields if d.change.op == "update" else []


def still_referenced(
    conn: Connection,
    info: TableInfo,
    references: list[Reference],
    keys: Iterable[tuple[Any, ...]],
    deleted: set[tuple[str, tuple[Any, ...]]],
) -> dict[tuple[Any, ...], dict[str, int]]:
    """Master rows (not among `deleted`) that reference each key: key -> {child table: count}."""
    key_list = list(dict.fromkeys(keys))
    out: dict[tuple[Any, ...], dict[str, int]] = {}
    rows: dict[tuple[Any, ...], dict[str, Any]] | None = None
    for reference in references:
        child = reference.child
        child_pk = [c.name for c in child.primary_key.columns]
        position = [info.pk.index(c) if c in info.pk else None for c in reference.parent_columns]
        if None in position and rows is None:
            # A reference to a unique column other than the key (`dept_no`): what the rows hold there.
            rows = fetch_rows_by_key(conn, info, key_list)
        for start in range(0, len(key_list), BATCH):
            chunk = key_list[start : start + BATCH]
            by_fk: dict[tuple[Any, ...], tuple[Any, ...]] = {}
            for k in chunk:
                if None not in position:
                    by_fk[tuple(k[p] for p in position)] = k  # type: ignore[index]
                elif rows is not None and (row := rows.get(k)) is not None:
                    value = tuple(row[c] for c in reference.parent_columns)
                    if None not in value:
                        by_fk[value] = k
            wanted = list(by_fk)
            if not wanted:
                continue
            fk_columns = [child.columns[c] for c in reference.columns]
            condition = (
                impl_for(conn).in_list(fk_columns[0], [w[0] for w in wanted])
                if len(fk_columns) == 1
                else (sa.tuple_(*fk_columns).in_(wanted))
            )
            query = sa.select(*fk_columns, *[child.columns[c] for c in child_pk]).where(condition)
            for found in conn.execute(query):
                fk_value = tuple(found[: len(fk_columns)])
                child_key = tuple(found[len(fk_columns) :])
                if (child.name, child_key) in deleted:
                    continue
                parent_key = by_fk.get(fk_value)
                if parent_key is None:
                    continue
                counts = out.setdefault(parent_key, {})
                counts[child.name] = counts.get(child.name, 0) + 1
    return out


def _find_referenced_deletes(
    conn: Connection,
    detected: list[Detected],
    info: TableInfo,
    references: list[Reference],
    local_deletes: set[tuple[str, tuple[Any, ...]]],
) -> None:
    """A local delete of a row that master rows (added or kept meanwhile) still reference."""
    candidates = [d for d in detected if d.change.op == "delete" and d.action in ("apply", "conflict")]
    if not candidates or not references:
        return
    referenced = still_referenced(conn, info, references, [d.change.key for d in candidates], local_deletes)
    for d in candidates:
        if d.change.key in referenced:
            d.action, d.kind = "conflict", "delete_update"
            d.detail = {**d.detail, "referenced_by": referenced[d.change.key]}
            d.note = "rows in the master still reference it"
