"""Imported once by each `dagster-celery worker` before it forks its pool (`-i sync_pipeline.defs.celery_worker`).

Every step of a run is a Celery task; the task loads the code location and, for the checks, Great
Expectations and pandas. Imported here, in the worker's main process, they are loaded once and shared
by every pool process (forked after this import) instead of once per pool process on its first task
(about 5 s of CPU for the code location and GX together, more on a busy machine). Nothing here opens
a connection or starts a thread: a forked child inherits no socket or lock.
"""

from __future__ import annotations

import os

# GX reads this when it is imported: no usage statistics (the network may be closed).
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

import great_expectations  # noqa: E402, F401 - warmed for the check steps
import great_expectations.expectations  # noqa: E402, F401
import pandas  # noqa: E402, F401
from dagster._core.execution.api import create_execution_plan  # noqa: E402, F401 - the task's own imports
from dagster_postgres import DagsterPostgresStorage  # noqa: E402, F401 - the production instance's storage

import sync_pipeline.definitions  # noqa: E402, F401 - the code location every task reconstructs
