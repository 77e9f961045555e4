"""The Dagster entry point named by workspace.yaml and [tool.dg]: the one place that builds `Definitions`.

Loading it imports neither Great Expectations nor pandas (the checks import them when they run) and
needs no master: resources resolve the master URL, settings and inbox when a run or tick uses them.
"""

from __future__ import annotations

import dagster as dg

from sync_pipeline.defs.assets import sync_assets
from sync_pipeline.defs.executor import sync_executor
from sync_pipeline.defs.instance_config import write_configured_instance_config
from sync_pipeline.defs.jobs import sync_jobs
from sync_pipeline.defs.overview import offline_replicas, purge_schedule, sync_purge
from sync_pipeline.defs.protocol_pdf import sync_protocol_pdf
from sync_pipeline.defs.resources import MasterDatabase, SyncInbox, SyncSettingsResource
from sync_pipeline.defs.sensors import sync_sensors


def build_definitions(master_url: str | None = None) -> dg.Definitions:
    """The code location. `master_url` pins the master (default: $SYNC_MASTER_URL, else the embedded
    SQLite master in $SYNC_HOME/master.db); a pinned URL is resource config, which Dagster stores in
    the job snapshots of every run, so pass URLs with passwords through SYNC_MASTER_URL instead."""
    return dg.Definitions(
        # The sync's checks are part of their assets (`check_specs`, evaluated in the asset's step).
        assets=[*sync_assets, sync_protocol_pdf, offline_replicas],
        jobs=[*sync_jobs, sync_purge],
        schedules=[purge_schedule],
        sensors=sync_sensors,
        # Every job and every materialization launched from the UI: in process for one person on one
        # machine (defs/jobs.py says why); the Celery executor in the production deployment
        # (SYNC_EXECUTOR=celery, deploy/README.md), where each step is a task on a worker.
        executor=sync_executor() or dg.in_process_executor,
        resources={
            "master": MasterDatabase(url=master_url),
            "sync_settings": SyncSettingsResource(),
            "inbox": SyncInbox(),
        },
    )


write_configured_instance_config()  # an empty $DAGSTER_HOME gets its dagster.yaml (no warning, no nux)
defs = build_definitions()
