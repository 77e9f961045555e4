"""The executor of the production deployment: Dagster's Celery executor, chosen by `SYNC_EXECUTOR=celery`.

Unset (the embedded default, one person on one machine), Dagster's own default applies and
`sync-pipeline sync` runs in-process. With `SYNC_EXECUTOR=celery`, every step of a run launched by the
daemon or the UI is a Celery task on the broker `SYNC_CELERY_BROKER` (default RabbitMQ at
127.0.0.1:5672, guest/guest), executed by `dagster-celery worker` processes here or on other machines
(deploy/README.md). Workers must be started with the same broker (deploy/celery.yaml).
"""

from __future__ import annotations

import os

import dagster as dg

EXECUTOR_ENV = "SYNC_EXECUTOR"
DEFAULT_BROKER = "pyamqp://guest:guest@127.0.0.1:5672//"
DEFAULT_BACKEND = "rpc://"


def sync_executor() -> dg.ExecutorDefinition | None:
    """The Celery executor when the deployment asks for it, else None (Dagster's default executor)."""
    choice = os.environ.get(EXECUTOR_ENV, "").strip().lower()
    if choice in ("", "default", "in_process", "in-process"):
        return None
    if choice != "celery":
        raise ValueError(f"{EXECUTOR_ENV}={choice!r}: use `celery` or leave it unset")
    from dagster_celery import celery_executor  # the optional `deploy` extra

    return celery_executor.configured(
        {
            "broker": os.environ.get("SYNC_CELERY_BROKER", DEFAULT_BROKER),
            "backend": os.environ.get("SYNC_CELERY_BACKEND", DEFAULT_BACKEND),
            # A task whose worker died (OOM, SIGKILL, a lost machine) is delivered again to another worker:
            # it is acknowledged only when it finished. The load is safe to run again (one transaction).
            "config_source": {
                "task_acks_late": True,
                "task_reject_on_worker_lost": True,
                # One deployment's workers take only its own tasks (`dagster-celery worker start -q NAME`).
                "task_default_queue": os.environ.get("SYNC_CELERY_QUEUE", "dagster"),
            },
        },
        name="celery",
    )
