"""PostgreSQL's catalogs as the engine reads them: foreign keys declared on partitions only, the sequences
behind columns (and moving them), the master's own triggers. Used by `PostgreSQLImpl`."""

from __future__ import annotations

from collections.abc import Iterable

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine.dialects.base import PartitionKey, TriggerRow, catalog_connection
from sync_pipeline.engine.triggers import CHANGES_NOTHING, FIRST_ARG_COLUMN, SourceEffects, read_source

# PostgreSQL lets a schema declare a partitioned table's foreign keys on each partition instead of on
# the table (common in schemas that predate PostgreSQL 12). Reflection of the table shows none of them,
# so the load would write its rows before their parents. These keys count as the table's own for the
# write order, orphan checks and the replica.
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


def partition_foreign_keys(bind: Engine | Connection, tables: Iterable[str]) -> list[PartitionKey]:
    names = list(tables)
    if not names:
        return []
    with catalog_connection(bind) as conn:
        rows = conn.execute(_PG_PARTITION_FKS, {"names": names}).all()
    found = {(r.table_name, tuple(r.columns), r.referred_table, tuple(r.referred_columns)) for r in rows}
    return sorted(found)


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


def find_sequences(bind: Engine | Connection, tables: Iterable[str]) -> dict[str, dict[str, str]]:
    names = list(tables)
    found: dict[str, dict[str, str]] = {}
    if not names:
        return found
    with catalog_connection(bind) as conn:
        for row in conn.execute(_PG_SEQUENCES, {"names": names}):
            found.setdefault(row.table_name, {}).setdefault(row.column_name, row.sequence_name)
    return found


def advance_sequence(conn: Connection, sequence: str, highest: int, lowest: int) -> None:
    conn.execute(_PG_ADVANCE, {"sequence": sequence, "highest": highest, "lowest": lowest})


_PG_TRIGGERS = sa.text(
    """
    SELECT t.tgname AS name, c.relname AS table_name, t.tgtype AS type, p.proname AS function,
           l.lanname AS language, p.prosrc AS source, t.tgargs AS args, t.tgnargs AS nargs
    FROM pg_trigger t
    JOIN pg_class c ON c.oid = t.tgrelid
    JOIN pg_proc p ON p.oid = t.tgfoid
    JOIN pg_language l ON l.oid = p.prolang
    WHERE NOT t.tgisinternal AND pg_table_is_visible(c.oid)
    ORDER BY c.relname, t.tgname
    """
)


def master_triggers(bind: Engine | Connection) -> list[TriggerRow]:
    with catalog_connection(bind) as conn:
        rows = conn.execute(_PG_TRIGGERS).all()
    found: list[TriggerRow] = []
    for row in rows:
        kind = row.type
        timing = "INSTEAD OF" if kind & 64 else "BEFORE" if kind & 2 else "AFTER"
        events = tuple(e for bit, e in ((4, "INSERT"), (16, "UPDATE"), (8, "DELETE"), (32, "TRUNCATE")) if kind & bit)
        args = [a.decode() for a in bytes(row.args or b"").split(b"\x00")[: row.nargs]]
        if row.language == "plpgsql":
            effects = read_source(row.source or "", fold=True)
        elif row.function in FIRST_ARG_COLUMN and args:
            effects = SourceEffects({args[0]}, [], set())
        elif row.function in CHANGES_NOTHING:
            effects = SourceEffects(set(), [], set())
        else:
            effects = SourceEffects(set(), [], set(), opaque_own=True)
        found.append((row.name, row.table_name, timing, events, effects))
    return found
