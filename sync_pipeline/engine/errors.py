"""Errors the engine raises. Each says what is wrong and how to fix it.

`BadInputError` (and its subclasses) means the input (replica, settings, arguments) is unusable and
nothing was written: the CLI maps it to exit code 2. Anything else is a failure (exit code 1).
"""

from __future__ import annotations


class SyncError(Exception):
    """Base of every error the engine raises on purpose."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(problem if fix is None else f"{problem}\n  fix: {fix}")


class BadInputError(SyncError):
    """The input cannot be synchronised; nothing was written to the master."""


class SettingsError(BadInputError):
    """The settings file is wrong: names the file, the line, the key and the fix."""

    def __init__(self, path: str, line: int | None, key: str, problem: str, fix: str) -> None:
        self.path = path
        self.line = line
        self.key = key
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {key}: {problem}", fix)


class ReplicaError(BadInputError):
    """The replica file is missing, not a replica, tampered with, retired or otherwise unusable."""


class SchemaDriftError(BadInputError):
    """The master's schema no longer matches what the replica was checked out from."""


class CaptureMissingError(BadInputError):
    """A module table (or a partition of one) lacks the master's change capture, or has it switched off."""


class NotInitialisedError(BadInputError):
    """The master has no sync tables yet."""


class ConflictNotFoundError(BadInputError):
    """A conflict id or session id that the master does not know."""


class DecisionError(BadInputError):
    """A decision that cannot be taken (wrong field, wrong choice, load already started)."""


class AlreadyDecidedError(DecisionError):
    """Someone decided the conflict after the person last looked at it."""

    def __init__(self, conflict_id: int, by: str, at: str) -> None:
        self.conflict_id, self.by, self.at = conflict_id, by, at
        super().__init__(
            f"conflict {conflict_id} was already decided by {by} at {at}",
            "look at the current decision; to change it deliberately, decide again",
        )
