"""The master's field clock as detection reads it: per-field change times, and which fields changed after
a replica's checkout (master changes whatever base the replica's change log claims)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync_pipeline.engine import store
from sync_pipeline.engine.dialects import impl_for
from sync_pipeline.engine.dialects.capture import rendered_keys
from sync_pipeline.engine.schema import TableInfo


def fetch_master_times(
    conn: Connection, info: TableInfo, keys: Iterable[tuple[Any, ...]]
) -> dict[tuple[Any, ...], dict[str, str]]:
    """Per-field change times from the master's field clock (empty where capture is off)."""
    key_list = list(dict.fromkeys(keys))
    if not key_list or not sa.inspect(conn).has_table("sync_field_clock"):
        return {}
    clock = store.sync_field_clock
    out: dict[tuple[Any, ...], dict[str, str]] = {}
    texts = rendered_keys(conn, info, key_list)
    wanted = list(texts)
    impl = impl_for(conn)
    batch = impl.lookup_batch()
    for start in range(0, len(wanted), batch):
        chunk = wanted[start : start + batch]
        rows = conn.execute(
            sa.select(clock.c.row_key, clock.c.column_name, clock.c.changed_at).where(
                clock.c.table_name == info.name, impl.in_list_second(clock.c.row_key, chunk)
            )
        )
        for row_key, column, changed_at in rows:
            out.setdefault(texts[row_key], {})[column] = changed_at
    return out


NONE: frozenset[str] = frozenset()


def checkout_time(conn: Connection, replica_id: str) -> str | None:
    """When the replica was checked out, by the master's own record (never the replica's manifest)."""
    r = store.sync_replica
    return conn.execute(sa.select(r.c.checked_out_at).where(r.c.replica_id == replica_id)).scalar()


def changed_after_checkout(
    times: dict[tuple[Any, ...], dict[str, str]], info: TableInfo, checked_out_at: str
) -> dict[tuple[Any, ...], frozenset[str]]:
    """Per key, the fields the master's clock shows changed after the checkout: master changes, whatever
    base the replica's log claims. A row deleted or inserted since ('*') changed in every field."""
    checkout = dt.datetime.fromisoformat(checked_out_at)
    every = frozenset(info.columns)
    out: dict[tuple[Any, ...], frozenset[str]] = {}
    for key, stamps in times.items():
        later = {c for c, stamp in stamps.items() if dt.datetime.fromisoformat(stamp) > checkout}
        if later:
            out[key] = every if "*" in later else frozenset(later) & every
    return out
