"""The load checks its own work before it commits.

Every row the load wrote is read back inside the load's transaction: each key holds the values the load
wrote last into it, and every key it deleted is gone. Only the columns the load wrote are compared: a
column the database computes or one of the master's triggers maintains (`triggers`) is not the load's
to check, and is read back into the applied history instead. A mismatch raises `LoadNotVerified`, which
rolls the whole load back: the session is not done, the replica is not retired, nothing is half loaded.
What was compared goes into the session's summary (`verified`), for the protocol and Dagster's checks.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync_pipeline.engine.detect import fetch_rows_by_key
from sync_pipeline.engine.dialects import impl_for
from sync_pipeline.engine.errors import SyncError
from sync_pipeline.engine.schema import TableInfo, ValueRejected, encode, normalizer

SHOWN_MISMATCHES = 5

Key = tuple[Any, ...]


class LoadNotVerified(SyncError):
    """The master does not hold what the load wrote; the load was rolled back."""


@dataclass
class WrittenRows:
    """What the load wrote into each row, in the order it wrote it (None: the row was deleted)."""

    rows: dict[tuple[str, Key], dict[str, Any] | None] = field(default_factory=dict)

    def wrote(self, table: str, key: Key, values: dict[str, Any]) -> None:
        earlier = self.rows.get((table, key))
        self.rows[(table, key)] = {**(earlier or {}), **values}

    def deleted(self, table: str, key: Key) -> None:
        self.rows[(table, key)] = None


def _same(column: sa.Column, written: Any, held: Any) -> bool:
    try:
        return normalizer(column)(written) == held
    except ValueRejected:
        return False


def _database_says_equal(conn: Connection, info: TableInfo, key: Key, name: str, value: Any) -> bool:
    """Whether the database itself finds the stored value equal to the written one, compared as the column's
    type (CHAR padding, REAL precision, case-insensitive text). Types without equality count as unequal."""
    column = info.table.columns[name]
    where = [info.table.columns[c] == v for c, v in zip(info.pk, key, strict=True)]
    query = sa.select(sa.literal(1)).where(
        *where, column.is_not_distinct_from(sa.cast(sa.literal(value, column.type), column.type))
    )
    try:
        with conn.begin_nested():
            return conn.execute(query).first() is not None
    except sa.exc.DBAPIError:
        return False


def _rows_to_look_at(
    conn: Connection, info: TableInfo, entries: list[tuple[Key, dict[str, Any] | None]], not_compared: set[str]
) -> list[tuple[Key, dict[str, Any] | None]]:
    """The entries whose rows Python compares: where the database joins what was written with the master
    (`DialectImpl.rows_that_may_differ`), only the written rows it finds gone or different, and the deleted
    ones; every entry where it does not, or where computed and trigger-maintained values are read back."""
    if not_compared & set(info.table.columns.keys()):
        return entries
    by_columns: dict[tuple[str, ...], list[tuple[Key, dict[str, Any]]]] = defaultdict(list)
    looked_at: list[tuple[Key, dict[str, Any] | None]] = []
    for key, values in entries:
        if values is None:
            looked_at.append((key, values))
        else:
            names = tuple(sorted(c for c in values if c in info.table.columns and c not in info.pk))
            by_columns[names].append((key, values))
    impl = impl_for(conn)
    for names, group in by_columns.items():
        expected = [{**values, **info.key_dict(key)} for key, values in group]
        differing = impl.rows_that_may_differ(conn, info, [*info.pk, *names], expected, lock=False)
        looked_at.extend(group if differing is None else [group[n] for n in sorted(differing)])
    return looked_at


def verify_load(
    conn: Connection, infos: dict[str, TableInfo], written: WrittenRows, applied: list[Any]
) -> dict[str, Any]:
    """Compare the master with what the load wrote (raises LoadNotVerified); returns what was verified.
    Values of computed and trigger-maintained columns are read back into `applied` rows' `after`."""
    by_table: dict[str, list[tuple[Key, dict[str, Any] | None]]] = defaultdict(list)
    for (table, key), values in written.rows.items():
        by_table[table].append((key, values))
    mismatches: list[str] = []
    tables: dict[str, dict[str, Any]] = {}
    read_back: dict[tuple[str, Key], dict[str, Any]] = {}
    for table, entries in by_table.items():
        info = infos[table]
        not_compared = info.generated_columns | info.maintained_columns
        looked_at = _rows_to_look_at(conn, info, entries, not_compared)
        current = fetch_rows_by_key(conn, info, [key for key, _ in looked_at])
        compared: set[str] = {
            name
            for _, values in entries
            for name in values or ()
            if name not in not_compared and name not in info.pk and name in info.table.columns
        }
        for key, values in looked_at:
            row = current.get(key)
            shown = f"{table} {dict(zip(info.pk, map(encode, key), strict=True))}"
            if values is None:
                if row is not None:
                    mismatches.append(f"{shown} is still there after the load deleted it")
                continue
            if row is None:
                mismatches.append(f"{shown} is missing after the load wrote it")
                continue
            read_back[(table, key)] = {c: row[c] for c in not_compared if c in row}
            for name, value in values.items():
                if name in not_compared or name in info.pk or name not in info.table.columns:
                    continue
                column = info.table.columns[name]
                if not _same(column, value, row[name]) and not _database_says_equal(conn, info, key, name, value):
                    mismatches.append(
                        f"{shown} column {name!r} holds {encode(row[name])!r}, the load wrote {encode(value)!r}"
                    )
        tables[table] = {
            "rows": sum(1 for _, v in entries if v is not None),
            "deleted": sum(1 for _, v in entries if v is None),
            "columns": sorted(compared),
            "generated_columns": sorted(info.generated_columns),
            "maintained_by_triggers": sorted(info.maintained_columns),
        }
    if mismatches:
        more = f" (and {len(mismatches) - SHOWN_MISMATCHES} more)" if len(mismatches) > SHOWN_MISMATCHES else ""
        triggers = sorted({t.describe() for table in by_table for t in infos[table].triggers})
        raise LoadNotVerified(
            "the master does not hold what the load wrote, so nothing was loaded: "
            + "; ".join(mismatches[:SHOWN_MISMATCHES])
            + more
            + (f". Triggers on these tables: {'; '.join(triggers)}" if triggers else ""),
            "a trigger or rule of the master changed or skipped these writes; the session is marked failed and "
            "the replica can be synchronised again once the master accepts the rows as written",
        )
    for a in applied:
        if a.after is not None and (extra := read_back.get((a.table, a.key))):
            a.after = {**a.after, **extra}
    return {
        "rows": sum(t["rows"] for t in tables.values()),
        "deleted": sum(t["deleted"] for t in tables.values()),
        "tables": tables,
    }
