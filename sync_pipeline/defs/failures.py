"""Engine errors across the Dagster boundary, with their type and fix intact.

A step that raises a `SyncError` would reach Dagster's event log as a class name and a formatted
message with a stack trace. `reports_sync_errors` turns it into a `dg.Failure` whose metadata holds
the error's type, problem and fix: the UI shows the problem as the failure's description and the fix
next to it, and `error_of` rebuilds the very error from a failed run's events, so the CLI prints the
message and the fix and exits with the error's code (2 for bad input), as without Dagster.
"""

from __future__ import annotations

import functools
import inspect
import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import dagster as dg

from sync_pipeline.engine.errors import SyncError

ERROR_TYPE, PROBLEM, FIX, ATTRIBUTES = "error_type", "problem", "fix", "error_attributes"
_FUNCTION = TypeVar("_FUNCTION", bound=Callable[..., Any])


def as_failure(error: SyncError) -> dg.Failure:
    """The Dagster failure carrying `error`: the problem as description, type and fix as metadata."""
    return dg.Failure(
        description=error.problem,
        metadata={
            ERROR_TYPE: f"{type(error).__module__}.{type(error).__qualname__}",
            PROBLEM: error.problem,
            FIX: error.fix or "",
            # What a subclass keeps besides problem and fix (SettingsError: path, line, key), so that the
            # error rebuilt from the event is the one raised, attribute for attribute.
            ATTRIBUTES: dg.MetadataValue.json(_attributes(error)),
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


def _attributes(error: SyncError) -> dict[str, Any]:
    """The error's own attributes that survive JSON (problem and fix travel as metadata of their own)."""
    kept: dict[str, Any] = {}
    for name, value in vars(error).items():
        try:
            json.dumps(value)
        except TypeError:
            continue
        kept[name] = value
    return kept


def _sync_error_classes() -> dict[str, type[SyncError]]:
    """Every engine error class by `module.QualName`: the types a failure's metadata may name. Only
    these are rebuilt; a name that is no `SyncError` of the loaded engine comes back as `SyncError`."""
    found: dict[str, type[SyncError]] = {}
    pending: list[type[SyncError]] = [SyncError]
    while pending:
        cls = pending.pop()
        found[f"{cls.__module__}.{cls.__qualname__}"] = cls
        pending.extend(cls.__subclasses__())
    return found


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
    cls = _sync_error_classes().get(str(plain.get(ERROR_TYPE) or ""), SyncError)
    # Subclasses take other constructor arguments (SettingsError: path, line, key): the error is built
    # through the base class, which makes the message from problem and fix, then given its own attributes.
    error = cls.__new__(cls)
    SyncError.__init__(error, problem, fix)
    attributes = plain.get(ATTRIBUTES)
    if isinstance(attributes, dict):
        for name, value in attributes.items():
            if name not in ("problem", "fix"):
                setattr(error, name, value)
    return error
