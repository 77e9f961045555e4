"""Progress bars for long work, shown only when stderr is a terminal (rich)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sync_pipeline.engine.checkout import Progress
from sync_pipeline.engine.progress import STAGES, listening

if TYPE_CHECKING:  # rich is imported only when bars are shown: loading the code location stays light
    from rich.progress import Progress as RichProgress


@contextmanager
def _bars() -> Iterator[RichProgress | None]:
    """Rich bars on stderr while the block runs, or None when stderr is not a terminal (pipes, logs, CI)."""
    if not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    # On stderr explicitly (rich's default is stdout): stdout carries results such as the replica id
    # that scripts capture, and must not receive the bars when it is a pipe.
    with RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(elapsed_when_finished=True),
        console=Console(stderr=True),
        transient=False,
    ) as bars:
        yield bars


def _one_bar_per_name(bars: RichProgress, label: Callable[[str], str]) -> Callable[[str, int, int], None]:
    """A progress callback `(name, done, total)` that opens a bar the first time a name reports.

    A name may report again (a load that re-detects, the apply job after the detect job): its bar is
    reused and simply moves back.
    """
    tasks: dict[str, int] = {}

    def update(name: str, done: int, total: int) -> None:
        if name not in tasks:
            tasks[name] = bars.add_task(label(name), total=total)
        bars.update(tasks[name], completed=done, total=total)

    return update


@contextmanager
def checkout_progress() -> Iterator[Progress | None]:
    with _bars() as bars:
        if bars is None:
            yield None
            return
        yield _one_bar_per_name(bars, lambda table: f"copy {table}")


@contextmanager
def sync_progress() -> Iterator[Callable[[str], None] | None]:
    """One bar per stage of the sync (engine/progress.py) while the block runs, when stderr is a terminal.

    Yields a function that prints a line above the bars (a plain write to stderr would tear the live
    display), or None when stderr is not a terminal: then nothing is shown and nothing listens.
    """
    with _bars() as bars:
        if bars is None:
            yield None
            return
        with listening(_one_bar_per_name(bars, lambda stage: STAGES.get(stage, stage))):
            yield lambda message: bars.console.print(f"… {message}", markup=False, highlight=False)
