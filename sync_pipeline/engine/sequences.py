"""Key generators of the master: which sequence feeds a column, and moving it past keys the load wrote.

A load writes explicit keys (the replica's own new rows, rows brought back). The master's applications
insert with default keys afterwards, so every generator must hand out values past the written ones, in
the load's transaction. Each dialect answers in its own way (`sequences_for`); MariaDB's AUTO_INCREMENT,
like SQLite's rowid and AUTOINCREMENT, follows explicit keys by itself and needs no entry here.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

# A sequence column's values are integers; bool is an int in Python but never a key.
_INT = int


class SequenceDialect(Protocol):
    def find(self, bind: Engine | Connection, tables: Iterable[str]) -> dict[str, dict[str, str]]:
        """For each table, column -> the name of the sequence that feeds it (default, ownership, identity)."""

    def advance(self, conn: Connection, sequence: str, highest: int, lowest: int) -> None:
        """Move the sequence past the written values (`highest` ascending, `lowest` descending)."""


class _FollowsByItself:
    """SQLite: an INTEGER PRIMARY KEY takes max(rowid) + 1 and AUTOINCREMENT's `sqlite_sequence` is raised
    by every insert of a larger key, so explicit keys never leave the generator behind."""

    def find(self, bind: Engine | Connection, tables: Iterable[str]) -> dict[str, dict[str, str]]:
        return {}

    def advance(self, conn: Connection, sequence: str, highest: int, lowest: int) -> None:
        return None


# Every sequence a column of a visible table depends on: through its DEFAULT nextval('...') (pg_attrdef,
# also a sequence the column does not own), through OWNED BY (serial) or as its identity.
_PG_SEQUENCES = sa.text(
    """
    SELECT c.relname AS table_name, a.attname AS column_name, CAST(CAST(s.oid AS regclass) AS text) AS sequence_name
    FROM pg_class c
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
    JOIN pg_depend d ON d.classid = CAST('pg_attrdef' AS regclass) AND d.objid = ad.oid
         AND d.refclassid = CAST('pg_class' AS regclass)
    JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'
    WHERE c.relname = ANY(:names) AND pg_table_is_visible(c.oid)
    UNION
    SELECT c.relname, a.attname, CAST(CAST(s.oid AS regclass) AS text)
    FROM pg_class c
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    JOIN pg_depend d ON d.refclassid = CAST('pg_class' AS regclass) AND d.refobjid = c.oid
         AND d.refobjsubid = a.attnum AND d.classid = CAST('pg_class' AS regclass) AND d.deptype IN ('a', 'i')
    JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
    WHERE c.relname = ANY(:names) AND pg_table_is_visible(c.oid)
    """
)

# setval only forward, never past the sequence's limits (a value beyond them was written explicitly and
# the generator could not reach it anyway); pg_sequence_last_value is NULL before the first nextval.
_PG_ADVANCE = sa.text(
    """
    SELECT setval(s.seqrelid, CASE WHEN s.seqincrement > 0 THEN :highest ELSE :lowest END)
    FROM pg_sequence s
    WHERE s.seqrelid = CAST(:sequence AS regclass)
      AND CASE WHEN s.seqincrement > 0
          THEN :highest <= s.seqmax
               AND :highest >= COALESCE(pg_sequence_last_value(s.seqrelid) + 1, s.seqstart)
          ELSE :lowest >= s.seqmin
               AND :lowest <= COALESCE(pg_sequence_last_value(s.seqrelid) - 1, s.seqstart)
          END
    """
)


class _PostgreSQL:
    def find(self, bind: Engine | Connection, tables: Iterable[str]) -> dict[str, dict[str, str]]:
        names = list(tables)
        found: dict[str, dict[str, str]] = {}
        if not names:
            return found
        with catalog_connection(bind) as conn:
            for row in conn.execute(_PG_SEQUENCES, {"names": names}):
                found.setdefault(row.table_name, {}).setdefault(row.column_name, row.sequence_name)
        return found

    def advance(self, conn: Connection, sequence: str, highest: int, lowest: int) -> None:
        conn.execute(_PG_ADVANCE, {"sequence": sequence, "highest": highest, "lowest": lowest})


@contextmanager
def catalog_connection(bind: Engine | Connection) -> Iterator[Connection]:
    """A connection for catalog reads: the caller's, or a short one of the engine's."""
    if isinstance(bind, Connection):
        yield bind
        return
    with bind.connect() as conn:
        yield conn


_BY_DIALECT: dict[str, SequenceDialect] = {"postgresql": _PostgreSQL()}


def sequences_for(dialect_name: str) -> SequenceDialect:
    return _BY_DIALECT.get(dialect_name) or _FollowsByItself()


def advance_past(conn: Connection, sequences: Mapping[str, str], rows: Iterable[Mapping[str, Any]]) -> None:
    """After writing `rows` (explicit values) into a table whose columns `sequences` feeds, move each
    sequence past the values written. Costs one statement per sequence column, not a table scan."""
    if not sequences:
        return
    rows = list(rows)
    dialect = sequences_for(conn.dialect.name)
    for column, sequence in sequences.items():
        values = [v for r in rows if isinstance(v := r.get(column), _INT) and not isinstance(v, bool)]
        if values:
            dialect.advance(conn, sequence, max(values), min(values))
