"""Resources of the code location: the master database, the settings and the inbox folder.

Every value is resolved when a run or sensor tick needs it, not when the code location loads, so
`dagster dev` starts even before `sync-pipeline init-master` has created a master.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field, PrivateAttr
from sqlalchemy.engine import Engine

from sync_pipeline.engine.master import connect_master, default_master_url, master_settings, sync_home
from sync_pipeline.engine.settings import SyncSettings, load_settings


class MasterDatabase(dg.ConfigurableResource):
    """The master database whose sync tables hold every session's durable state."""

    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL of the master. Empty: $SYNC_MASTER_URL, else the embedded SQLite master "
        "sqlite:///$SYNC_HOME/master.db ($SYNC_HOME defaults to ~/.sync_pipeline).",
    )

    # Set up once per run in each process that executes its steps (all of them, with the in-process
    # executor): what the steps share about the run's session (`run_state`). No teardown: a resource
    # with one is a context manager, which every `build_sensor_context` would then have to be.
    _in_run: bool = PrivateAttr(default=False)
    _run_state: dict[str, Any] = PrivateAttr(default_factory=dict)

    def resolved_url(self) -> str:
        return self.url or default_master_url()

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._in_run = context.run is not None  # a sensor tick has no run: nothing is shared there

    @contextmanager
    def engine(self) -> Iterator[Engine]:
        """A SQLAlchemy engine for the duration of one step; its pool is closed afterwards."""
        engine = connect_master(self.resolved_url())
        try:
            yield engine
        finally:
            engine.dispose()

    def run_state(self) -> dict[str, Any]:
        """State the steps of one run share in this process (the session's context, see
        `assets.partition_session`), dropped with the run's resources; a fresh, unshared dict outside a
        run."""
        return self._run_state if self._in_run else {}


class SyncSettingsResource(dg.ConfigurableResource):
    """The sync settings: a YAML file if one is named, else the settings stored on the master.

    A session always validates against the settings frozen into its replica at checkout; these
    settings decide what is not frozen per replica, such as the inbox folder.
    """

    settings_path: str | None = Field(
        default=None,
        description="Path of a settings YAML file. Empty: the settings `init-master` stored on the master.",
    )

    def load(self, engine: Engine) -> SyncSettings:
        if self.settings_path:
            return load_settings(self.settings_path)
        return master_settings(engine)


class SyncInbox(dg.ConfigurableResource):
    """The folder `replica_sensor` watches for replica files (`*.db`) to synchronise."""

    path: str | None = Field(
        default=None,
        description="The inbox folder. Empty: the settings' `inbox`, else $SYNC_INBOX, else $SYNC_HOME/inbox.",
    )

    def folder(self, settings: SyncSettings | None = None) -> Path:
        if self.path:
            return Path(self.path).expanduser()
        if settings is not None and settings.inbox:
            return Path(settings.inbox).expanduser()
        if os.environ.get("SYNC_INBOX"):
            return Path(os.environ["SYNC_INBOX"]).expanduser()
        return sync_home() / "inbox"
