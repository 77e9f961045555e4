"""Engine errors across the Dagster boundary, with their type and fix intact.

A step that raises a `SyncError` would reach Dagster's event log as a class name and a formatted
message with a stack trace. `reports_sync_errors` turns it into a `dg.Failure` whose metadata holds
the error's type, problem and fix: the UI shows the problem as the failure's description and the fix
next to it, and `error_of` rebuilds the very error from a failed run's events, so the CLI prints the
message and the fix and exits with the error's code (2 for bad input), as without Dagster.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import dagster as dg

from sync_pipeline.engine.errors import SyncError

ERROR_TYPE, PROBLEM, FIX = "error_type", "problem", "fix"
_FUNCTION = TypeVar("_FUNCTION", bound=Callable[..., Any])


def as_failure(error: SyncError) -> dg.Failure:
    """The Dagster failure carrying `error`: the problem as description, type and fix as metadata."""
    return dg.Failure(
        description=error.problem,
        metadata={
            ERROR_TYPE: f"{type(error).__module__}.{type(error).__qualname__}",
            PROBLEM: error.problem,
            FIX: error.fix or "",
        },
        allow_retries=False,
    )


def reports_sync_errors(step: _FUNCTION) -> _FUNCTION:
    """Decorate an asset or check body (below `@dg.asset`): a `SyncError` leaves it as `as_failure`."""
    if inspect.isgeneratorfunction(step):

        @functools.wraps(step)
        def generating(*args: Any, **kwargs: Any) -> Iterator[Any]:
            try:
                yield from step(*args, **kwargs)
            except SyncError as error:
                raise as_failure(error) from None

        return generating  # type: ignore[return-value]

    @functools.wraps(step)
    def returning(*args: Any, **kwargs: Any) -> Any:
        try:
            return step(*args, **kwargs)
        except SyncError as error:
            raise as_failure(error) from None

    return returning  # type: ignore[return-value]


def _error_class(name: str) -> type[SyncError] | None:
    """The engine error class named `module.QualName`, if it is one of the package's `SyncError`s."""
    module_name, _, class_name = name.rpartition(".")
    if not module_name.startswith("sync_pipeline."):
        return None
    try:
        found = getattr(importlib.import_module(module_name), class_name, None)
    except ImportError:
        return None
    return found if isinstance(found, type) and issubclass(found, SyncError) else None


def error_of(description: str | None, metadata: Mapping[str, Any]) -> SyncError | None:
    """The error a step failed with, rebuilt from its `dg.Failure`'s description and metadata (plain values
    or `MetadataValue`s); None when the failure carries no fix (it is no error the engine raised).

    A failure an asset raised itself (e.g. "replica X has no session") carries a fix but no type: it comes
    back as a `SyncError`, which the CLI reports as a failure (exit 1), never as a stack trace."""
    plain = {key: getattr(value, "value", value) for key, value in metadata.items()}
    if FIX not in plain:
        return None
    problem = str(plain.get(PROBLEM) or description or "the step failed")
    fix = str(plain[FIX]) or None
    cls = _error_class(str(plain.get(ERROR_TYPE) or "")) or SyncError
    # Subclasses may take other constructor arguments (SettingsError: path, line, key); the message and
    # fix are all the base class keeps, so the error is built through it.
    error = cls.__new__(cls)
    SyncError.__init__(error, problem, fix)
    return error
