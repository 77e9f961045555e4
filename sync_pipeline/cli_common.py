"""What every `sync-pipeline` command shares: the master option, exit codes and error handling.

Kept apart from `cli.py` so that command modules (and the review page, which imports some of them)
can use it without importing the whole CLI.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from typing import Any

import click
from sqlalchemy.engine import Engine

from sync_pipeline.engine.errors import BadInputError, SyncError

EXIT_DONE, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_WAITING = 0, 1, 2, 3

master_option = click.option(
    "--master",
    "master_url",
    envvar="SYNC_MASTER_URL",
    default=None,
    metavar="URL",
    help="Master database URL (default: $SYNC_MASTER_URL, else sqlite:///$SYNC_HOME/master.db).",
)


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def handles_errors(func: Callable[..., Any]) -> Callable[..., Any]:
    """Turn engine errors into a message on stderr and the contract's exit code."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except BadInputError as exc:
            _fail(str(exc), EXIT_BAD_INPUT)
        except SyncError as exc:
            _fail(str(exc), EXIT_FAILED)
        except (KeyboardInterrupt, click.exceptions.Exit, click.ClickException):
            raise
        except Exception as exc:  # noqa: BLE001 - the last line of defence prints, never a traceback
            _fail(f"{type(exc).__name__}: {exc}", EXIT_FAILED)

    return wrapper


def open_master(master_url: str | None, must_exist: bool = True) -> Engine:
    from sync_pipeline.engine.master import connect_master

    return connect_master(master_url, must_exist=must_exist)
