"""Extraction: the replica's change log -> net changes per row (docs/sync_rules.md §2).

Only the log is read, so the cost follows the number of local changes, not the size of the tables.
Coalescing: update+update = one update with the union of changed fields; insert..delete = nothing;
insert+update = insert of the final row; a field changed and changed back = no change.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy.engine import Engine

from sync_pipeline.engine.column_types import TextRejected, carrier_of
from sync_pipeline.engine.dialects import impl_for
from sync_pipeline.engine.errors import ReplicaError
from sync_pipeline.engine.faults import armed, checkpoint
from sync_pipeline.engine.progress import report
from sync_pipeline.engine.replica_guard import refused
from sync_pipeline.engine.schema import TableInfo, ValueRejected, fk_order, normalize

Op = Literal["insert", "update", "delete"]
PROGRESS_EVERY = 1000  # log entries between progress reports


@dataclass(slots=True)
class RowChange:
    """The net local change of one row since checkout."""

    table: str
    key: tuple[Any, ...]
    op: Op
    base: dict[str, Any] | None  # the row at checkout (update, delete)
    local: dict[str, Any] | None  # the row now (insert, update)
    changed: list[str]  # update: fields that differ from base; insert: every column
    times: dict[str, str]  # field -> when it last changed locally; '*' -> the row's last change
    seq: int  # position of the row's first log entry: keeps local order within a table

    def key_dict(self, pk: tuple[str, ...]) -> dict[str, Any]:
        return dict(zip(pk, self.key, strict=True))


@dataclass
class ChangeSet:
    changes: list[RowChange] = field(default_factory=list)

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for change in self.changes:
            per_table = out.setdefault(change.table, {"insert": 0, "update": 0, "delete": 0})
            per_table[change.op] += 1
        return out

    def __len__(self) -> int:
        return len(self.changes)


LogEntry = tuple[int, str, str, str, str | None, str | None, str]


def _log_entries(replica: sqlite3.Connection) -> Iterator[LogEntry]:
    """The log, row by row (each row's entries in the order they were written): one row's entries are
    netted, then dropped, so memory holds the net changes, never the whole decoded log."""
    try:
        cursor = replica.execute(
            "SELECT seq, table_name, op, row_key, old_values, new_values, changed_at FROM _sync_log "
            "ORDER BY table_name, row_key, seq"
        )
        yield from cursor
    except sqlite3.DatabaseError as exc:
        raise refused(None, exc) from None


def _log_length(replica: sqlite3.Connection) -> int:
    try:
        return int(replica.execute("SELECT count(*) FROM _sync_log").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        raise refused(None, exc) from None


def _decode(text: str | None, info: TableInfo, where: str, column_set: frozenset[str]) -> dict[str, Any] | None:
    if text is None:
        return None
    try:
        raw = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        raise ReplicaError(
            f"{where}: the change log holds values that are not JSON (or nested too deeply)",
            "the replica was edited by hand; check out a new replica",
        ) from None
    # The log's triggers write one object of plain values per row: anything nested was written by hand.
    if type(raw) is not dict:
        raise ReplicaError(f"{where}: the change log holds a malformed row", "check out a new replica")
    for value in raw.values():
        if isinstance(value, (dict, list)):
            raise ReplicaError(f"{where}: the change log holds a malformed row", "check out a new replica")
    if not column_set.issuperset(raw):
        unknown = set(raw) - column_set
        raise ReplicaError(
            f"{where}: the change log names column(s) {', '.join(sorted(unknown))} that table "
            f"'{info.name}' does not have",
            "the replica was edited or comes from another schema; check out a new replica",
        )
    return raw


def _normalized(
    row: dict[str, Any],
    info: TableInfo,
    where: str,
    raw_base: dict[str, Any] | None = None,
    base: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The row in the master's types. With the base row (raw and normalised), a value the row shares with
    its base is taken from there: most columns of an updated row are unchanged."""
    try:
        if raw_base is not None and base is not None:
            out = {}
            for name, normal in info.normalizers:
                value, before = row.get(name), raw_base.get(name)
                out[name] = base[name] if type(value) is type(before) and value == before else normal(value)
            return out
        return {name: normal(row.get(name)) for name, normal in info.normalizers}
    except ValueRejected:
        pass
    # Find the value at fault, to name its column.
    out = {}
    for name in info.columns:
        value = row.get(name)
        try:
            out[name] = normalize(value, info.table.columns[name])
        except ValueRejected as exc:
            raise ReplicaError(
                f"{where}, column '{name}': {exc}; the master's column type rejects it",
                "correct the value in the replica with the application that wrote it, then sync again",
            ) from None
    return out


def extract_changes(replica: sqlite3.Connection, infos: dict[str, TableInfo]) -> ChangeSet:
    """Net changes of every table in `infos`, from the replica's change log."""
    column_sets = {name: frozenset(info.columns) for name, info in infos.items()}
    total = _log_length(replica)
    faults_armed = armed()
    changes: list[RowChange] = []
    entries: list[LogEntry] = []
    for done, entry in enumerate(_log_entries(replica), 1):
        if entries and (entry[1] != entries[0][1] or entry[3] != entries[0][3]):
            _append_net_change(changes, entries, infos, column_sets)
            entries = []
        entries.append(entry)
        if faults_armed:
            checkpoint("extract")
        if done % PROGRESS_EVERY == 0:
            report("extract", done, total)
    if entries:
        _append_net_change(changes, entries, infos, column_sets)
    report("extract", total, total)
    order = {name: index for index, name in enumerate(fk_order(infos))}
    changes.sort(key=lambda c: (order[c.table], c.seq))
    return ChangeSet(changes)


def _append_net_change(
    changes: list[RowChange], entries: list[LogEntry], infos: dict[str, TableInfo], column_sets: dict[str, frozenset]
) -> None:
    """Net the log entries of one row (in the order written) into its change, if anything is left."""
    first_seq, table, _op, row_key = entries[0][:4]
    info = infos.get(table)
    if info is None:
        raise ReplicaError(
            f"the change log touches table '{table}', which is not in the replica's modules",
            "the replica was edited by hand; it cannot be synchronised. Check out a new replica",
        )
    where = f"table '{table}', key {row_key}"
    columns = column_sets[table]
    existed: bool | None = None
    base: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    times: dict[str, str] = {}
    for seq, _table, op, _key, old_text, new_text, changed_at in entries:
        old, new = _decode(old_text, info, where, columns), _decode(new_text, info, where, columns)
        if op not in ("I", "U", "D") or (op != "D" and new is None) or (op != "I" and old is None):
            raise ReplicaError(f"{where}: malformed change log entry {seq}", "check out a new replica")
        if existed is None:
            existed = op != "I"
            # base and last may share the dict: `last` is replaced by each entry, never changed in place.
            base = old if existed else None
            last = old if existed else {}
        if op == "D":
            last = None
            times.update(dict.fromkeys(info.columns, changed_at))
        else:
            assert new is not None
            previous = last or {}
            for name in info.columns:
                if op == "I" or previous.get(name) != new.get(name):
                    times[name] = changed_at
            last = new
        times["*"] = changed_at
    key = tuple(_key_values(row_key, info, where))
    if not existed:
        if last is None:
            return  # inserted then deleted: nothing happened
        local = _normalized(last, info, where)
        for name in info.generated_columns:
            local[name] = None  # the master computes it; whatever the replica holds is no change
        written = [c for c in info.columns if c not in info.generated_columns]
        changes.append(RowChange(table, key, "insert", None, local, written, times, first_seq))
        return
    assert base is not None
    base_row = _normalized(base, info, where)
    if last is None:
        changes.append(RowChange(table, key, "delete", base_row, None, [], times, first_seq))
        return
    local = _normalized(last, info, where, base, base_row)
    for name in info.generated_columns:
        # A computed column is the master's to compute: a local edit of it is ignored, never a change
        # or a conflict field; the row shows the value the master held.
        local[name] = base_row[name]
    changed = [c for c in info.columns if base_row[c] != local[c]]
    if changed:
        kept = {c: times[c] for c in changed if c in times} | {"*": times["*"]}
        changes.append(RowChange(table, key, "update", base_row, local, changed, kept, first_seq))


def _key_values(row_key: str, info: TableInfo, where: str) -> list[Any]:
    try:
        values = json.loads(row_key)
    except (ValueError, TypeError, RecursionError):
        values = None
    if not isinstance(values, list) or len(values) != len(info.pk) or any(isinstance(v, (dict, list)) for v in values):
        raise ReplicaError(f"{where}: malformed key in the change log", "check out a new replica")
    try:
        return [normal(v) for normal, v in zip(info.key_normalizers, values, strict=True)]
    except ValueRejected as exc:
        raise ReplicaError(
            f"{where}: key value rejected by the master's type ({exc})",
            "correct the key in the replica, then sync again",
        ) from None


def canonicalize_local_values(engine: Engine, changes: ChangeSet, infos: dict[str, TableInfo]) -> None:
    """Local values of columns carried as the database's text (see column_types), as the master will
    hold them: `academy dinosaur` in a tsvector column becomes `'academy' 'dinosaur'`, `48:00:00` stays
    an interval of hours. So a local value compares with the master's as the master would, the load
    writes what the master reads back, and a value the column's type rejects is refused here, naming its
    row and column, rather than failing the load. One query per column and 500 distinct values; nothing
    to do on a master without such columns. Key columns too (a cidr key logged as `10.0.0.9` is
    the master's `10.0.0.9/32`), so a row is found under the key the master holds.
    """
    wanted: dict[tuple[str, str], set[str]] = {}
    for change in changes.changes:
        info = infos[change.table]
        columns = info.table.columns
        for name, value in zip(info.pk, change.key, strict=True):
            if isinstance(value, str) and carrier_of(columns[name]).kind == "text":
                wanted.setdefault((change.table, name), set()).add(value)
        if change.local is None:
            continue
        for name in change.changed:
            value = change.local.get(name)
            if isinstance(value, str) and carrier_of(columns[name]).kind == "text":
                wanted.setdefault((change.table, name), set()).add(value)
    if not wanted:
        return
    rules = impl_for(engine).types
    canonical: dict[tuple[str, str], dict[str, str]] = {}
    with engine.connect() as conn:
        for (table, name), values in wanted.items():
            info = infos[table]
            try:
                canonical[(table, name)] = rules.canonical_texts(conn, info.table.columns[name], sorted(values))
            except TextRejected as exc:
                change = next(
                    c
                    for c in changes.changes
                    if c.table == table and (exc.value in c.key or (c.local or {}).get(name) == exc.value)
                )
                raise ReplicaError(
                    f"table '{table}', key {change.key_dict(info.pk)}, column '{name}': {exc.value!r} is rejected "
                    f"by the master's column type ({exc.reason})",
                    "correct the value in the replica with the application that wrote it, then sync again",
                ) from None
    kept: list[RowChange] = []
    for change in changes.changes:
        pk = infos[change.table].pk
        key = tuple(
            canonical.get((change.table, name), {}).get(value, value) if isinstance(value, str) else value
            for name, value in zip(pk, change.key, strict=True)
        )
        if key != change.key:
            change.key = key
            for row in (change.base, change.local):
                if row is not None:
                    row.update(zip(pk, key, strict=True))
        if change.local is not None:
            for name in change.changed:
                texts = canonical.get((change.table, name))
                if texts is not None and change.local.get(name) in texts:
                    change.local[name] = texts[change.local[name]]
            if change.op == "update":
                assert change.base is not None
                # Rewritten in the type's own form, a value may be the base again: no change then.
                change.changed = [c for c in change.changed if change.base[c] != change.local[c]]
                if not change.changed:
                    continue
        kept.append(change)
    changes.changes = kept
