"""Which columns the load writes, and how a dialect inserts into identity columns.

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
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.dml import Insert

from sync_pipeline.engine.schema import TableInfo


def writable(info: TableInfo, op: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The values an insert or update may write (see the module's rules)."""
    skipped = info.generated_columns | (info.identity_always if op == "update" else frozenset())
    columns = info.table.columns
    out = {}
    for name, value in values.items():
        if name in skipped:
            continue
        if value is None and op == "insert" and name in columns and _filled_by_default(columns[name]):
            continue
        out[name] = value
    return out


def _filled_by_default(column: sa.Column) -> bool:
    return not column.nullable and (column.server_default is not None or column.identity is not None)


class _OverridingInsert(Insert):
    """INSERT … OVERRIDING SYSTEM VALUE (PostgreSQL): explicit values into GENERATED ALWAYS identities."""

    inherit_cache = True


@compiles(_OverridingInsert, "postgresql")
def _compile_overriding(element: _OverridingInsert, compiler: Any, **kw: Any) -> str:
    text: str = compiler.visit_insert(element, **kw)
    return text[: (end := _column_list_end(text))] + " OVERRIDING SYSTEM VALUE" + text[end:]


def _column_list_end(sql: str) -> int:
    """The position after `INSERT INTO name (columns)`, skipping quoted identifiers."""
    i, depth, quoted = 0, 0, False
    while i < len(sql):
        char = sql[i]
        if char == '"':
            quoted = not quoted
        elif not quoted and char == "(":
            depth += 1
        elif not quoted and char == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError("an INSERT without a column list")


def _plain_insert(info: TableInfo, columns: Iterable[str]) -> Insert:
    return sa.insert(info.table)


def _postgresql_insert(info: TableInfo, columns: Iterable[str]) -> Insert:
    if info.identity_always & set(columns):
        return _OverridingInsert(info.table)
    return sa.insert(info.table)


_INSERTS: dict[str, Callable[[TableInfo, Iterable[str]], Insert]] = {"postgresql": _postgresql_insert}


def insert_statement(conn: Connection, info: TableInfo, columns: Iterable[str]) -> Insert:
    """An INSERT into the table that accepts explicit values for every one of `columns`."""
    return _INSERTS.get(conn.dialect.name, _plain_insert)(info, columns)


def grouped_by_columns(rows: Iterable[dict[str, Any]]) -> Iterator[tuple[tuple[str, ...], list[dict[str, Any]]]]:
    """Rows grouped by the columns they hold: one executemany per group."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[tuple(sorted(row))].append(row)
    yield from groups.items()
