"""Progress of a sync's long steps, for whoever listens (the CLI's progress bars).

The engine reports `(stage, done, total)` at chunk boundaries; nobody listens by default. A listener
is process-wide rather than passed down, because the CLI's default sync runs the engine inside Dagster
steps (in this process) where no argument of ours reaches the engine's functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

# stage, done, total. Stages: extract, verify, detect, store, load, record.
Listener = Callable[[str, int, int], None]

STAGES: dict[str, str] = {
    "extract": "read the change log",
    "verify": "verify base values",
    "detect": "detect conflicts",
    "store": "store the session",
    "load": "write into the master",
    "record": "record the applied history",
}

_listeners: list[Listener] = []


def report(stage: str, done: int, total: int) -> None:
    for listener in _listeners:
        listener(stage, done, total)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call `listener` with every report made while the block runs."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)
