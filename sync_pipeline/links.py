"""URLs of the review page and of the Dagster UI, from the environment.

A neutral module, free of Starlette and Dagster imports: the Dagster assets link to the review page with
`review_session_url` (without importing the page), and the page links to Dagster runs with the others.
"""

from __future__ import annotations

import os
from urllib.parse import quote, urlencode

DEFAULT_DAGSTER_UI_URL = "http://127.0.0.1:3000"
DEFAULT_REVIEW_HOST = "127.0.0.1"
DEFAULT_REVIEW_PORT = 8000
# The run tag every run of a session carries; must equal `sync_pipeline.defs.sensors.SESSION_TAG`
# (a test checks it). Not imported from there, so that the page does not import Dagster.
SESSION_TAG = "sync/session"


def dagster_ui_url(base: str | None = None) -> str:
    """`base`, else `$DAGSTER_UI_URL`, else the local `dagster dev` address."""
    return (base or os.environ.get("DAGSTER_UI_URL") or DEFAULT_DAGSTER_UI_URL).rstrip("/")


def dagster_run_url(run_id: str, base: str | None = None) -> str:
    return f"{dagster_ui_url(base)}/runs/{quote(run_id)}"


def dagster_session_runs_url(session_id: str, base: str | None = None) -> str:
    """The Dagster runs list filtered to the runs of one session (the UI's own filter syntax)."""
    return f"{dagster_ui_url(base)}/runs?{urlencode({'q[0]': f'tag:{SESSION_TAG}={session_id}'})}"


def review_url(base: str | None = None) -> str:
    """`base`, else `$SYNC_REVIEW_URL`, else where `sync-pipeline serve` listens by default."""
    return (base or os.environ.get("SYNC_REVIEW_URL") or f"http://{DEFAULT_REVIEW_HOST}:{DEFAULT_REVIEW_PORT}").rstrip(
        "/"
    )


def review_session_url(session_id: str, base: str | None = None) -> str:
    return f"{review_url(base)}/sessions/{quote(session_id)}"
