"""Which columns the load writes, and the INSERT that writes explicit values into identity columns.

- Computed columns (GENERATED ALWAYS AS … STORED, SQLite generated columns) are never written, on insert
  or update: the database computes them; the load reads them back (`load_verify`).
- GENERATED ALWAYS AS IDENTITY columns are inserted with OVERRIDING SYSTEM VALUE, so a row keeps the key
  it has in the replica and in the rows that reference it (as for serial and BY DEFAULT identity keys);
  the sequence is then advanced past it (`sequences`). They are never updated (the database refuses).
- A NULL for a NOT NULL column that has a default (a timestamp, a sequence) is left out of the insert:
  the master's default fills it, as it would for the master's own applications.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import Insert

from sync_pipeline.engine.dialects import impl_for
from sync_pipeline.engine.schema import TableInfo, filled_by_default


def writable(info: TableInfo, op: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The values an insert or update may write (see the module's rules)."""
    skipped = info.generated_columns | (info.identity_always if op == "update" else frozenset())
    columns = info.table.columns
    out = {}
    for name, value in values.items():
        if name in skipped:
            continue
        if value is None and op == "insert" and name in columns and filled_by_default(columns[name]):
            continue
        out[name] = value
    return out


def insert_statement(conn: Connection, info: TableInfo, columns: Iterable[str]) -> Insert:
    """An INSERT into the table that accepts explicit values for every one of `columns` (PostgreSQL:
    OVERRIDING SYSTEM VALUE for GENERATED ALWAYS identities; `DialectImpl.insert_statement`)."""
    return impl_for(conn).insert_statement(info, columns)


def grouped_by_columns(rows: Iterable[dict[str, Any]]) -> Iterator[tuple[tuple[str, ...], list[dict[str, Any]]]]:
    """Rows grouped by the columns they hold: one executemany per group."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[tuple(sorted(row))].append(row)
    yield from groups.items()
