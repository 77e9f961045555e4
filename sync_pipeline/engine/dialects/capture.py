"""Helpers shared by every dialect's change-capture trigger DDL: quoting, trigger names, and keys
rendered the way the triggers write them into `row_key`.

Trigger DDL is the one place where SQL is written as text (checked by test_security's reviewed-DDL rule);
every identifier in it goes through `quote_identifier` (or the database's own quoting rule)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync_pipeline.engine.schema import KEY_SEPARATOR, TableInfo, key_text


def sql_string(value: str) -> str:
    """A SQL string literal (for trigger bodies only, where bind parameters do not exist)."""
    return "'" + value.replace("'", "''") + "'"


def quote_identifier(name: str) -> str:
    """A delimited identifier by the rule SQLite and PostgreSQL share: in double quotes, a double quote
    doubled. Always quoted, whatever the name: a reserved word, a space, a quote, a `$` or a `%` stays one
    name (SQLAlchemy's preparer doubles `%` for its own paramstyle, which a trigger body must not get)."""
    if "\x00" in name:
        raise ValueError(f"an identifier with a NUL character cannot be quoted: {name!r}")
    return '"' + name.replace('"', '""') + '"'


def dollar_quoted(body: str, tag_name: str = "sync") -> str:
    """`body` between dollar-quote tags (PostgreSQL function bodies) that nothing in it can end early.

    The body holds quoted identifiers and string literals taken from the schema: if one of them contains
    the tag, a fresh random tag is drawn until the body's end is the tag's first occurrence.
    """
    tag = f"${tag_name}$"
    while (body + tag).find(tag) != len(body):
        tag = f"${tag_name}_{secrets.token_hex(8)}$"
    return f"{tag}{body}{tag}"


def trigger_name(prefix: str, table: str, suffix: str = "") -> str:
    # Identifiers are limited (63 bytes on PostgreSQL): long table names get a stable hash instead.
    name = f"{prefix}_{table}{suffix}"
    if len(name.encode()) > 60:
        digest = hashlib.sha1(table.encode()).hexdigest()[:12]
        name = f"{prefix}_{digest}{suffix}"
    return name


RENDER_BATCH = 500


def rendered_keys(conn: Connection, info: TableInfo, keys: Iterable[tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    """Keys as the triggers write them into `row_key` (CAST(col AS TEXT), joined by KEY_SEPARATOR)."""
    key_list = list(dict.fromkeys(keys))
    if not key_list:
        return {}
    # Integers and strings render the same in Python as CAST(... AS TEXT) on every dialect.
    if all(
        isinstance(info.table.columns[c].type, (sa.Integer, sa.String))
        and not isinstance(info.table.columns[c].type, (sa.Boolean, sa.Enum))
        for c in info.pk
    ):
        return {KEY_SEPARATOR.join(str(v) for v in key): key for key in key_list}
    # Other types: let the database render ours the way the triggers do (one column per key, in batches
    # under the databases' limits on a select list).
    out: dict[str, tuple[Any, ...]] = {}
    for start in range(0, len(key_list), RENDER_BATCH):
        chunk = key_list[start : start + RENDER_BATCH]
        rendered = conn.execute(
            sa.select(*[key_text(info.table, info.pk, k).label(f"k{i}") for i, k in enumerate(chunk)])
        ).one()
        out.update(zip(rendered, chunk, strict=True))
    return out
