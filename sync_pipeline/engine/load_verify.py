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
        current = fetch_rows_by_key(conn, info, [key for key, _ in entries])
        compared: set[str] = set()
        for key, values in entries:
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
                compared.add(name)
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
