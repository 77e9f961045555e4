"""Natural keys under MySQL/MariaDB collations: is `MULLER` the same person as `Müller`?

The server compares a text column by its collation: under the default `utf8mb4_general_ci` (case- and
accent-insensitive, trailing spaces ignored) `'MULLER' = 'Müller'`, under `utf8mb4_bin` not. A natural
key is the same record when the server says so, so a local value is matched with a master value by the
collation's own sort key (`WEIGHT_STRING(value COLLATE c)`), computed by the server, never by Python's
idea of case and accents. The match is written in the duplicate's note, with the collation's name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine.dialects.base import Key, KeyedRows, catalog_connection
from sync_pipeline.engine.schema import TableInfo

COLLATION_INFO = "collation"  # Column.info key: (character set, collation) of a text column
BATCH = 200  # values per WEIGHT_STRING select
_NAME = re.compile(r"^\w+$")  # character set and collation names as the catalog holds them


def read_collations(bind: Engine | Connection, table: sa.Table) -> None:
    """Record each text column's character set and collation (from the catalog) in `column.info`."""
    query = sa.text(
        "SELECT COLUMN_NAME, CHARACTER_SET_NAME, COLLATION_NAME FROM information_schema.COLUMNS "
        "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t AND COLLATION_NAME IS NOT NULL"
    )
    with catalog_connection(bind) as conn:
        for name, charset, collation in conn.execute(query, {"t": table.name}):
            if name in table.columns and _NAME.match(charset or "") and _NAME.match(collation or ""):
                table.columns[name].info[COLLATION_INFO] = (charset, collation)


def _folding(info: TableInfo, column: str) -> tuple[str, str] | None:
    """(charset, collation) of a column whose collation calls different strings equal; None if exact."""
    found = info.table.columns[column].info.get(COLLATION_INFO)
    if found is None or found[1].endswith("_bin") or found[0] == "binary":
        return None
    return found


def _weights(conn: Connection, charset: str, collation: str, values: list[str]) -> dict[str, bytes]:
    """Each value's sort key under the collation, as the server computes it."""
    out: dict[str, bytes] = {}
    as_column = mysql.VARCHAR(charset=charset)
    for start in range(0, len(values), BATCH):
        chunk = values[start : start + BATCH]
        keys = [
            sa.func.weight_string(sa.collate(sa.cast(sa.literal(v, sa.String), as_column), collation)) for v in chunk
        ]
        out.update(zip(chunk, conn.execute(sa.select(*keys)).one(), strict=True))
    return out


def match_natural_keys(
    conn: Connection, info: TableInfo, columns: Sequence[str], wanted: list[Key], hits: KeyedRows
) -> tuple[KeyedRows, dict[Key, str]]:
    """`hits` (master rows by their natural-key values) keyed by the wanted local values they equal under
    the columns' collations, and a note for each match that is not the same text."""
    folding = {i: f for i, c in enumerate(columns) if (f := _folding(info, c)) is not None}
    if not folding or not hits:
        return hits, {}
    weights: dict[int, dict[str, bytes]] = {}
    for i, (charset, collation) in folding.items():
        values = {k[i] for k in [*wanted, *hits] if isinstance(k[i], str)}
        weights[i] = _weights(conn, charset, collation, sorted(values))

    def fold(key: Key) -> Key:
        return tuple(weights[i].get(v, v) if i in weights and isinstance(v, str) else v for i, v in enumerate(key))

    by_fold = {fold(key): (key, row) for key, row in hits.items()}
    matched: KeyedRows = {}
    notes: dict[Key, str] = {}
    for key in wanted:
        found = by_fold.get(fold(key))
        if found is None:
            continue
        matched[key] = found[1]
        if found[0] != key:
            rules = ", ".join(f"{columns[i]}: {folding[i][1]}" for i in folding)
            notes[key] = (
                f"the same natural key under the column collation ({rules}): "
                f"{', '.join(map(repr, key))} equals the master's {', '.join(map(repr, found[0]))}"
            )
    return matched, notes
