"""The replica's change log checked against the master's own record before anything is detected: a
base value the master never held, or a row it never had, means the log was edited (docs/architecture.md,
"The laptop is untrusted")."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync_pipeline.engine.clock import fetch_master_times
from sync_pipeline.engine.detect import Prefetched, fetch_rows_by_key
from sync_pipeline.engine.errors import ReplicaError
from sync_pipeline.engine.extract import ChangeSet, RowChange
from sync_pipeline.engine.progress import report
from sync_pipeline.engine.schema import TableInfo

# A write transaction that began before the checkout and committed after its snapshot carries a
# change time before the checkout yet is not in the replica's base: allow for that much overlap.
CLOCK_OVERLAP = dt.timedelta(minutes=10)


def verify_bases(
    conn: Connection,
    changes: ChangeSet,
    infos: dict[str, TableInfo],
    checked_out_at: str,
    seen: Prefetched | None = None,
) -> None:
    """Refuse a change log whose base values (or keys) the master never held.

    Where the master's field clock shows no change of a field since the checkout, the master's current
    value *is* the base the replica must report; a different base means the log was edited. An updated or
    deleted row that the master neither has nor deleted since the checkout never existed.
    """
    if not sa.inspect(conn).has_table("sync_field_clock"):
        return
    since = dt.datetime.fromisoformat(checked_out_at) - CLOCK_OVERLAP

    def changed_since(stamp: str | None) -> bool:
        return stamp is not None and dt.datetime.fromisoformat(stamp) >= since

    by_table: dict[str, list[RowChange]] = defaultdict(list)
    for change in changes.changes:
        if change.op != "insert":
            by_table[change.table].append(change)
    total, done = sum(len(c) for c in by_table.values()), 0
    for table, table_changes in by_table.items():
        info = infos[table]
        keys = [c.key for c in table_changes]
        masters = fetch_rows_by_key(conn, info, keys)
        times = fetch_master_times(conn, info, keys)
        if seen is not None:
            seen[table] = (set(keys), masters, times)
        done += len(keys)
        report("verify", done, total)
        for change in table_changes:
            assert change.base is not None
            stamps = times.get(change.key, {})
            if changed_since(stamps.get("*")):
                continue  # inserted or deleted on the master since the checkout
            master = masters.get(change.key)
            if master is None:
                raise ReplicaError(
                    f"table '{table}', key {change.key_dict(info.pk)}: the change log {change.op}s a row that the "
                    "master did not have at checkout",
                    "the replica's change log was edited; a tampered replica is never loaded. Check out a new replica",
                )
            base = change.base
            for column in info.columns:
                value, master_value = base[column], master[column]
                if master_value != value:
                    if not changed_since(stamps.get(column)):
                        raise ReplicaError(
                            f"table '{table}', key {change.key_dict(info.pk)}: the change log says column "
                            f"'{column}' was {value!r} at checkout, but the master held {master_value!r} and has "
                            "not changed it since",
                            "the replica's change log was edited; a tampered replica is never loaded. "
                            "Check out a new replica",
                        )
                elif type(master_value) is type(value):
                    master[column] = value  # one object for both rows: a large session holds both
