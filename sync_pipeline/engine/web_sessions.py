"""Login sessions of the review page, kept in the master (`sync_web_session`).

The browser holds only a random session id; the master holds its SHA-256 with the account, the
password fingerprint at login and the times. So logout, a password change and an account's removal
end a login wherever its cookie was copied, and a restart of the page keeps everyone logged in.

Times come from the caller's clock (seconds since the epoch) so that tests expire sessions without
waiting; they are stored as fixed-width ISO text like every other time in the sync tables.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError

from sync_pipeline.engine.store import metadata, sync_web_session

# `seen_at` is written at most this often per session (never more than a tenth of the idle limit):
# a page view must not queue behind a sync's long write transaction on SQLite for every request.
TOUCH_EVERY_SECONDS = 60.0


@dataclass(frozen=True)
class WebSession:
    account: str
    password_fingerprint: str
    created_at: float
    seen_at: float
    expires_at: float


def _iso(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).replace(tzinfo=None).isoformat(timespec="microseconds")


def _seconds(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def has_table(engine: Engine) -> bool:
    return sa.inspect(engine).has_table(sync_web_session.name)


def ensure_table(engine: Engine) -> None:
    """Create the table on a master initialised before it existed (idempotent)."""
    with engine.begin() as conn:
        metadata.create_all(conn, tables=[sync_web_session], checkfirst=True)


def start(engine: Engine, account: str, password_fingerprint: str, now: float, max_seconds: float) -> str:
    """A new login session; returns its id (for the cookie). Sessions past their end are purged."""
    ensure_table(engine)
    session_id = secrets.token_urlsafe(32)
    with engine.begin() as conn:
        conn.execute(sa.delete(sync_web_session).where(sync_web_session.c.expires_at < _iso(now)))
        conn.execute(
            sa.insert(sync_web_session).values(
                id_hash=_hash(session_id),
                account=account,
                password_fingerprint=password_fingerprint,
                created_at=_iso(now),
                seen_at=_iso(now),
                expires_at=_iso(now + max_seconds),
            )
        )
    return session_id


def find(engine: Engine, session_id: str, now: float, idle_seconds: float) -> WebSession | None:
    """The live session of this id, its `seen_at` moved on; None when unknown, ended or expired.

    An expired session is deleted here, so its id is worthless from then on.
    """
    key = sync_web_session.c.id_hash == _hash(session_id)
    try:
        with engine.begin() as conn:
            row = conn.execute(sa.select(sync_web_session).where(key)).first()
            if row is None:
                return None
            found = WebSession(
                row.account,
                row.password_fingerprint,
                _seconds(row.created_at),
                _seconds(row.seen_at),
                _seconds(row.expires_at),
            )
            if now >= found.expires_at or now - found.seen_at > idle_seconds:
                conn.execute(sa.delete(sync_web_session).where(key))
                return None
            if now - found.seen_at >= min(TOUCH_EVERY_SECONDS, idle_seconds / 10):
                conn.execute(sa.update(sync_web_session).where(key).values(seen_at=_iso(now)))
            return found
    except DBAPIError:
        if not has_table(engine):  # a master initialised before the table existed: nobody is logged in
            return None
        raise


def end(engine: Engine, session_id: str) -> None:
    """Log out: the id is worthless from now on, wherever the cookie was copied."""
    if has_table(engine):
        with engine.begin() as conn:
            conn.execute(sa.delete(sync_web_session).where(sync_web_session.c.id_hash == _hash(session_id)))


def end_all_of(engine: Engine, account: str) -> int:
    """End every login of an account (password changed, account removed); returns how many ended."""
    if not has_table(engine):
        return 0
    with engine.begin() as conn:
        return conn.execute(sa.delete(sync_web_session).where(sync_web_session.c.account == account)).rowcount
