"""The master the page serves, reopened when its SQLite file is replaced.

`sync-pipeline demo` (or an operator restoring a backup) removes `master.db` and builds a new file
under the same name. Pooled SQLite connections keep the deleted file open and would go on serving its
sessions; so every use compares the file's device and inode with the ones the engine was opened on,
and opens the new file when they differ. A PostgreSQL master is a server, not a file: nothing to do.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import Engine, make_url

from sync_pipeline.engine.master import connect_master

log = logging.getLogger("sync_pipeline.review")


class FollowedMaster:
    def __init__(self, url: str | None, engine: Engine | None = None) -> None:
        self._engine = engine or connect_master(url)
        database = make_url(self._engine.url).database if self._engine.dialect.name == "sqlite" else None
        self.path = Path(database) if database and database != ":memory:" else None
        self._identity = self._file_identity()
        self._lock = threading.Lock()
        self._on_reopen: list[Callable[[], None]] = []

    def on_reopen(self, callback: Callable[[], None]) -> None:
        """Called after the master was reopened (caches of the old master's tables are stale)."""
        self._on_reopen.append(callback)

    def _file_identity(self) -> tuple[int, int] | None:
        if self.path is None:
            return None
        try:
            stat = os.stat(self.path)
        except OSError:
            return None
        return stat.st_dev, stat.st_ino

    def engine(self) -> Engine:
        identity = self._file_identity()
        # A missing file is a master being rebuilt: keep the old one until the new file is there.
        if identity is None or identity == self._identity:
            return self._engine
        with self._lock:
            if identity != self._identity:
                old = self._engine
                self._engine = connect_master(str(self._engine.url.render_as_string(hide_password=False)))
                self._identity = identity
                old.dispose()
                log.warning("the master file %s was replaced: reopened it", self.path)
                for callback in self._on_reopen:
                    callback()
        return self._engine

    def dispose(self) -> None:
        self._engine.dispose()
