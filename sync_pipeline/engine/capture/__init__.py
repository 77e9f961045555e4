"""Change capture, one small module per dialect (the layout of alembic's `ddl/`).

`capture_for(dialect_name)` returns the implementation for the master's dialect. Trigger DDL is the
one place where SQL is written by hand; every identifier in it goes through the dialect's quoting.
"""

from __future__ import annotations

from sync_pipeline.engine.capture.base import MasterCapture
from sync_pipeline.engine.errors import BadInputError


def capture_for(dialect_name: str) -> MasterCapture:
    if dialect_name == "sqlite":
        from sync_pipeline.engine.capture.sqlite import SQLiteMasterCapture

        return SQLiteMasterCapture()
    if dialect_name == "postgresql":
        from sync_pipeline.engine.capture.postgresql import PostgreSQLMasterCapture

        return PostgreSQLMasterCapture()
    raise BadInputError(
        f"master change capture is not available for the {dialect_name!r} dialect",
        "use a SQLite or PostgreSQL master, or set `master_change_capture: false` in the settings",
    )


__all__ = ["MasterCapture", "capture_for"]
