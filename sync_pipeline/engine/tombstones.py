"""The master's tombstones: the image of a row the master deleted, as its change-capture triggers kept it.

An orphan decided 'local' brings its deleted parent back. The values it writes must be ones the master
itself held, not the replica's copy of the parent: a worker can edit that copy outside the change log,
and the reviewer, who sees only the reference, would let the edit in. So the parent is re-created from
its tombstone, the master's own record of the row at the moment it was deleted.

Without a tombstone (the row was deleted before change capture was installed, capture is off, or
retention purged it), no image the master vouches for exists: the parent is not re-created and the
rows that need it are dropped, as for an orphan decided 'master', with a reason that says so. The
replica's values (its current row, or a base its change log claims) are never used instead: both are
in the worker's hands.
"""

from __future__ import annotations

import decimal
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync_pipeline.engine import store
from sync_pipeline.engine.dialects import DialectImpl, impl_for
from sync_pipeline.engine.dialects.capture import rendered_keys
from sync_pipeline.engine.schema import TableInfo, ValueRejected, decode_row

BATCH = 500
# Where a re-created parent's values come from, as the protocol and the review page say it.
SOURCE_TOMBSTONE = "tombstone"
NO_TOMBSTONE_REASON = (
    "its parent was deleted on the master, which kept no image of that row (deleted before change capture, "
    "or purged by retention): the parent cannot be re-created from the master's own record"
)


@dataclass
class Tombstone:
    row: dict[str, Any]  # normalised, every column of the table
    deleted_at: str
    deleted_by: str | None  # 'current_user=… session_user=… application_name=…', None where unknown


def latest_tombstones(
    conn: Connection, info: TableInfo, keys: Iterable[tuple[Any, ...]]
) -> dict[tuple[Any, ...], Tombstone]:
    """The newest tombstone of each key (primary key values), where the master kept one."""
    if not sa.inspect(conn).has_table(store.sync_tombstone.name):
        return {}
    impl = impl_for(conn)
    texts = rendered_keys(conn, info, keys)
    wanted = list(texts)
    t = store.sync_tombstone
    found: dict[tuple[Any, ...], Tombstone] = {}
    for start in range(0, len(wanted), BATCH):
        chunk = wanted[start : start + BATCH]
        query = (
            sa.select(t.c.row_key, t.c.deleted_at, t.c.row_image, t.c.deleted_by)
            .where(t.c.table_name == info.name, impl.in_list_second(t.c.row_key, chunk))
            .order_by(t.c.row_key, t.c.deleted_at)
        )
        for row_key, deleted_at, image, deleted_by in conn.execute(query):
            row = _decode_image(image, info, impl)
            if row is not None:  # ordered by time: the newest readable image wins
                found[texts[row_key]] = Tombstone(row, deleted_at, _who(deleted_by))
    return found


def _decode_image(image: str, info: TableInfo, impl: DialectImpl) -> dict[str, Any] | None:
    """The row of a tombstone's JSON image, or None where it does not fit the table as it is now."""
    try:
        data = json.loads(image, parse_float=decimal.Decimal)
    except ValueError:
        return None
    if not isinstance(data, dict) or set(data) != set(info.columns):
        return None  # the table's columns changed since the row was deleted
    for name, value in data.items():
        if isinstance(info.table.columns[name].type, sa.LargeBinary) and isinstance(value, str):
            data[name] = impl.tombstone_bytes(value)  # each database writes binary values its own way
    try:
        return decode_row(data, info.table)
    except ValueRejected:
        return None


def _who(deleted_by: str | None) -> str | None:
    if not deleted_by:
        return None
    try:
        roles = json.loads(deleted_by)
    except ValueError:
        return None
    if not isinstance(roles, dict):
        return None
    parts = [f"{k}={v}" for k, v in roles.items() if v not in (None, "")]
    return " ".join(parts) or None
