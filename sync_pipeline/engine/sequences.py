"""Key generators of the master: which sequence feeds a column, and moving it past keys the load wrote.

A load writes explicit keys (the replica's own new rows, rows brought back). The master's applications
insert with default keys afterwards, so every generator must hand out values past the written ones, in
the load's transaction. Each database finds and moves its generators in its own way
(`DialectImpl.find_sequences`, `advance_sequence`); SQLite's rowid and AUTOINCREMENT follow explicit keys
by themselves and report none.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy.engine import Connection

from sync_pipeline.engine.dialects import impl_for

# A sequence column's values are integers; bool is an int in Python but never a key.
_INT = int


def advance_past(conn: Connection, sequences: Mapping[str, str], rows: Iterable[Mapping[str, Any]]) -> None:
    """After writing `rows` (explicit values) into a table whose columns `sequences` feeds, move each
    sequence past the values written. Costs one statement per sequence column, not a table scan."""
    if not sequences:
        return
    rows = list(rows)
    impl = impl_for(conn)
    for column, sequence in sequences.items():
        values = [v for r in rows if isinstance(v := r.get(column), _INT) and not isinstance(v, bool)]
        if values:
            impl.advance_sequence(conn, sequence, max(values), min(values))
