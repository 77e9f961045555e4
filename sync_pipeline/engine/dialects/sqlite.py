"""SQLite as the master: a file, one writer at a time, rowid keys, no roles, no partitions.

Change capture is three triggers per table (`sqlite_capture.py`); the replica's own change log is in
`sqlite_replica.py`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from sync_pipeline.engine.column_types import (
    CARRIER_INFO,
    DialectTypes,
    SQLiteStoredTemporal,
    TextFormat,
    generic_carrier,
)
from sync_pipeline.engine.dialects import sqlite_capture as capture
from sync_pipeline.engine.dialects.base import DialectImpl, TriggerRow, catalog_connection
from sync_pipeline.engine.errors import BadInputError
from sync_pipeline.engine.schema import TableInfo
from sync_pipeline.engine.triggers import read_source, without_comments_and_strings


class SQLiteImpl(DialectImpl):
    __dialect__ = "sqlite"
    capture_module = capture

    # -- connecting --------------------------------------------------------------------------------

    def create_engine(self, url: URL, *, must_exist: bool) -> Engine:
        from sync_pipeline.engine.master import create_private_file

        database = url.database or ""
        if must_exist and database not in ("", ":memory:") and not Path(database).exists():
            raise BadInputError(
                f"the master database file {database} does not exist",
                "check --master / SYNC_MASTER_URL, or run `sync-pipeline init-master` first",
            )
        if database not in ("", ":memory:") and Path(database).parent.is_dir():
            # A new master file holds the signing key: 0600 from the start (SQLite gives its journals the
            # same mode).
            create_private_file(Path(database))
        # hide_parameters: an operator's SQL log must never show the signing key or row values.
        engine = sa.create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)

        @sa.event.listens_for(engine, "connect")
        def _setup(dbapi_conn: Any, _record: Any) -> None:
            self.on_connect(dbapi_conn)

        return engine

    def on_connect(self, dbapi_conn: Any) -> None:
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    # -- clock and change capture -----------------------------------------------------------------

    def now(self, conn: Connection) -> str:
        return conn.execute(sa.select(sa.func.strftime("%Y-%m-%dT%H:%M:%f", "now"))).scalar_one()

    def capture_installed(self, conn: Connection, info: TableInfo) -> bool:
        names = set(capture.trigger_names(info))
        found = conn.execute(
            sa.text("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = :t"), {"t": info.name}
        ).scalars()
        return names <= set(found)

    # -- locks ------------------------------------------------------------------------------------

    def lock_rows(self, query: sa.Select[Any]) -> sa.Select[Any]:
        return query  # no row locks: `lock_for_write` takes the database's one lock instead

    def lock_for_write(self, conn: Connection, touch: sa.Update) -> None:
        conn.execute(touch)

    # -- keys -------------------------------------------------------------------------------------

    def key_is_generated(self, column: sa.Column[Any], column_type: sa.types.TypeEngine[Any]) -> bool:
        return True  # a single integer primary key is SQLite's rowid: the database assigns it

    # -- reflection -------------------------------------------------------------------------------

    @property
    def types(self) -> DialectTypes:
        return _TYPES

    def master_triggers(self, bind: Engine | Connection) -> list[TriggerRow]:
        query = sa.text("SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'trigger' ORDER BY tbl_name, name")
        with catalog_connection(bind) as conn:
            rows = conn.execute(query).all()
        found: list[TriggerRow] = []
        for name, table, sql in rows:
            text = without_comments_and_strings(sql or "")
            head = _TRIGGER_HEAD.search(text)
            timing = " ".join((head.group(1) or "BEFORE").upper().split()) if head else "BEFORE"
            events = (head.group(2).upper(),) if head else ()
            begin = re.search(r"\bBEGIN\b", text, re.IGNORECASE)
            effects = read_source(text[begin.end() :] if begin else "", fold=False)
            effects.opaque_own = False  # SQLite triggers cannot assign NEW; EXECUTE does not exist
            found.append((name, table, timing, events, effects))
        return found

    def name_key(self, name: str) -> str:
        return name.lower()  # SQLite compares names ignoring case


_TRIGGER_HEAD = re.compile(
    r"\b(BEFORE|AFTER|INSTEAD\s+OF)?\s*\b(DELETE|INSERT|UPDATE)\b(?:\s+OF\s+.*?)?\s+ON\b", re.IGNORECASE | re.DOTALL
)


class SQLiteTypes(DialectTypes):
    """Dates and times are text (or numbers) in SQLite: each column keeps the format its rows use."""

    def prepare(self, bind: Engine | Connection, table: sa.Table) -> None:
        for column in table.columns:
            kind = _temporal_kind(column.type)
            if kind is not None:
                sample = _text_sample(bind, table, column)
                text_format = TextFormat.from_sample(sample)
                if kind == "date" and sample and len(sample.strip()) > 10 and text_format.separator:
                    # A DATE column holding '2003-10-17 00:00:00' keeps that suffix on written dates.
                    text_format = TextFormat(midnight_suffix=sample.strip()[10:])
                column.type = SQLiteStoredTemporal(column.type, kind, text_format)
            # SQLite's INTEGER holds 64 bits whatever the declared width.
            column.info[CARRIER_INFO] = generic_carrier(column.type, int_bits=64)


def _temporal_kind(column_type: sa.types.TypeEngine[Any]) -> str | None:
    if isinstance(column_type, sa.DateTime):
        return "datetime"
    if isinstance(column_type, sa.Date):
        return "date"
    if isinstance(column_type, sa.Time):
        return "time"
    return None


def _text_sample(bind: Engine | Connection, table: sa.Table, column: sa.Column[Any]) -> str | None:
    """One text value of the column (the first found): the format other rows use. Cheap: it stops at the
    first row that has one."""
    query = sa.select(sa.cast(column, sa.Text)).where(column.is_not(None), sa.func.typeof(column) == "text").limit(1)
    with catalog_connection(bind) as conn:
        return conn.execute(query).scalar()


_TYPES = SQLiteTypes()
