"""Retention of the sync tables: history older than `retention_days` (settings, default 90) is purged.

The unit is the session: a session that closed (done or failed) before the cutoff goes with all its
rows (changes, conflicts, decisions, applied history), so that no protocol is ever left half there.
A session still open (extracted/detected/waiting/ready/loading) is never touched, however old:
it may wait for a decision for weeks. Replica rows stay: they are what refuses a retired replica
forever, and there is one small row per checkout.

The master's field clock (`sync_field_clock`) is purged too, but only below the oldest checkout of a
replica that can still sync: detection needs a field's master change time only for changes made
after the replica's checkout, so older clock rows can no longer decide anything.

Tombstones (`sync_tombstone`, the images of rows the master deleted) are purged once older than the
window, whatever replica is still out: they are copies of deleted data, kept no longer than the
retention promises. An orphan whose parent's tombstone is gone can no longer re-create the parent
(engine/tombstones.py says what happens then).
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine import store
from sync_pipeline.engine.master import master_settings
from sync_pipeline.engine.records import CLOSED_STATUSES, OPEN_STATUSES, ReplicaStatus

BATCH = 500
# Deleted children first, so that foreign keys hold at every step.
PURGED_TABLES = (
    "sync_decision",
    "sync_conflict",
    "sync_applied",
    "sync_change",
    "sync_session",
    "sync_field_clock",
    "sync_tombstone",
)


def cutoff(days: int, now: dt.datetime | None = None) -> str:
    current = now or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    return (current - dt.timedelta(days=days)).isoformat(timespec="microseconds")


def retention_days(engine: Engine) -> int:
    """The retention in force: the settings stored on the master (`retention_days`, default 90)."""
    return master_settings(engine).retention_days


def _purgeable_sessions(conn: Connection, before: str) -> list[str]:
    s = store.sync_session
    closed_at = sa.func.coalesce(s.c.finished_at, s.c.started_at)
    assert not set(CLOSED_STATUSES) & set(OPEN_STATUSES)
    query = sa.select(s.c.session_id).where(s.c.status.in_([str(x) for x in CLOSED_STATUSES]), closed_at < before)
    return [row[0] for row in conn.execute(query.order_by(s.c.session_id))]


def _clock_cutoff(conn: Connection, before: str) -> str:
    """Clock rows older than this can no longer matter: before the cutoff and every live checkout."""
    r = store.sync_replica
    oldest_live = conn.execute(
        sa.select(sa.func.min(r.c.checked_out_at)).where(r.c.status != str(ReplicaStatus.RETIRED))
    ).scalar()
    return min(before, oldest_live) if oldest_live else before


def purge_sync_history(
    engine: Engine, days: int | None = None, now: dt.datetime | None = None, dry_run: bool = False
) -> dict[str, int]:
    """Delete what is older than `days` (default: the settings' retention_days); returns rows per table.

    One transaction: a purge that fails half-way deletes nothing. With `dry_run` the counts are those a
    purge would delete, and nothing is deleted.
    """
    days = retention_days(engine) if days is None else days
    if days < 1:
        raise ValueError("retention is at least one day")
    before = cutoff(days, now)
    counts = dict.fromkeys(PURGED_TABLES, 0)
    with engine.begin() as conn:
        sessions = _purgeable_sessions(conn, before)
        for start in range(0, len(sessions), BATCH):
            chunk = sessions[start : start + BATCH]
            conflict_ids = sa.select(store.sync_conflict.c.conflict_id).where(
                store.sync_conflict.c.session_id.in_(chunk)
            )
            statements = {
                "sync_decision": store.sync_decision.c.conflict_id.in_(conflict_ids),
                "sync_conflict": store.sync_conflict.c.session_id.in_(chunk),
                "sync_applied": store.sync_applied.c.session_id.in_(chunk),
                "sync_change": store.sync_change.c.session_id.in_(chunk),
                "sync_session": store.sync_session.c.session_id.in_(chunk),
            }
            for name, condition in statements.items():
                counts[name] += _purge(conn, store.metadata.tables[name], condition, dry_run)
        clock = store.sync_field_clock
        counts["sync_field_clock"] = _purge(conn, clock, clock.c.changed_at < _clock_cutoff(conn, before), dry_run)
        tombstone = store.sync_tombstone
        counts["sync_tombstone"] = _purge(conn, tombstone, tombstone.c.deleted_at < before, dry_run)
    return counts


def _purge(conn: Connection, table: sa.Table, condition: sa.ColumnElement[bool], dry_run: bool) -> int:
    """Delete the rows of `table` that meet `condition`, or with `dry_run` only count them."""
    if dry_run:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table).where(condition)).scalar_one())
    return int(conn.execute(sa.delete(table).where(condition)).rowcount)
