"""The page's name for `sync_pipeline.links`, where the URLs are built (shared with the Dagster assets)."""

from sync_pipeline.links import (
    DEFAULT_DAGSTER_UI_URL,
    DEFAULT_REVIEW_HOST,
    DEFAULT_REVIEW_PORT,
    SESSION_TAG,
    dagster_run_url,
    dagster_session_runs_url,
    dagster_ui_url,
    review_session_url,
    review_url,
)

__all__ = [
    "DEFAULT_DAGSTER_UI_URL",
    "DEFAULT_REVIEW_HOST",
    "DEFAULT_REVIEW_PORT",
    "SESSION_TAG",
    "dagster_run_url",
    "dagster_session_runs_url",
    "dagster_ui_url",
    "review_session_url",
    "review_url",
]
