"""The interface every dialect's master change capture implements, and helpers shared by them."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod

from sqlalchemy.engine import Connection

from sync_pipeline.engine.schema import TableInfo


def sql_string(value: str) -> str:
    """A SQL string literal (for trigger bodies only, where bind parameters do not exist)."""
    return "'" + value.replace("'", "''") + "'"


def trigger_name(prefix: str, table: str, suffix: str = "") -> str:
    # Identifiers are limited (63 bytes on PostgreSQL): long table names get a stable hash instead.
    name = f"{prefix}_{table}{suffix}"
    if len(name.encode()) > 60:
        digest = hashlib.sha1(table.encode()).hexdigest()[:12]
        name = f"{prefix}_{digest}{suffix}"
    return name


class MasterCapture(ABC):
    """Per-field change times on the master, written by triggers into `sync_field_clock`."""

    @abstractmethod
    def now(self, conn: Connection) -> str:
        """The master's clock, in the triggers' format: checkout times compare with change times."""

    @abstractmethod
    def install(self, conn: Connection, table: TableInfo) -> None:
        """Create (or replace) the triggers of one table."""

    @abstractmethod
    def remove(self, conn: Connection, table: TableInfo) -> None:
        """Drop the triggers of one table."""

    @abstractmethod
    def installed(self, conn: Connection, table: TableInfo) -> bool:
        """Whether the table's triggers exist."""
