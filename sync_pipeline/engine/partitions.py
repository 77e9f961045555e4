"""Foreign keys a partitioned table holds through its partitions only.

PostgreSQL lets a schema declare a partitioned table's foreign keys on each partition instead of on
the table (common in schemas that predate PostgreSQL 12). Reflection of the table shows none of them,
so the load would write its rows before their parents. These keys count as the table's own for the
write order, orphan checks and the replica. Dialects without partitions have no entry.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine.sequences import catalog_connection

# (table, columns, referred table, referred columns)
PartitionKey = tuple[str, tuple[str, ...], str, tuple[str, ...]]


class PartitionDialect(Protocol):
    def foreign_keys(self, bind: Engine | Connection, tables: Iterable[str]) -> list[PartitionKey]: ...


# Partitions at any depth (a partition may be partitioned again); constraints a partition inherited from
# its table (conparentid) are the table's own and reflected with it already.
_PG_PARTITION_FKS = sa.text(
    """
    WITH RECURSIVE tree(root, child) AS (
        SELECT i.inhparent, i.inhrelid
        FROM pg_inherits i JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relkind = 'p' AND p.relname = ANY(:names) AND pg_table_is_visible(p.oid)
        UNION ALL
        SELECT t.root, i.inhrelid FROM tree t JOIN pg_inherits i ON i.inhparent = t.child
    )
    SELECT r.relname AS table_name, f.relname AS referred_table,
        ARRAY(SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY AS k(n, o)
              JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.n ORDER BY k.o) AS columns,
        ARRAY(SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY AS k(n, o)
              JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.n ORDER BY k.o) AS referred_columns
    FROM tree t
    JOIN pg_class r ON r.oid = t.root
    JOIN pg_constraint con ON con.conrelid = t.child AND con.contype = 'f' AND con.conparentid = 0
    JOIN pg_class f ON f.oid = con.confrelid
    """
)


class _PostgreSQL:
    def foreign_keys(self, bind: Engine | Connection, tables: Iterable[str]) -> list[PartitionKey]:
        names = list(tables)
        if not names:
            return []
        with catalog_connection(bind) as conn:
            rows = conn.execute(_PG_PARTITION_FKS, {"names": names}).all()
        found = {(r.table_name, tuple(r.columns), r.referred_table, tuple(r.referred_columns)) for r in rows}
        return sorted(found)


class _NoPartitions:
    def foreign_keys(self, bind: Engine | Connection, tables: Iterable[str]) -> list[PartitionKey]:
        return []


_BY_DIALECT: dict[str, PartitionDialect] = {"postgresql": _PostgreSQL()}


def partitions_for(dialect_name: str) -> PartitionDialect:
    return _BY_DIALECT.get(dialect_name) or _NoPartitions()
