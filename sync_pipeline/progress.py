"""Progress bars for long work, shown only when stderr is a terminal (rich)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

from sync_pipeline.engine.checkout import Progress


@contextmanager
def checkout_progress() -> Iterator[Progress | None]:
    if not sys.stderr.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as RichProgress

    with RichProgress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=False
    ) as bars:
        tasks: dict[str, int] = {}

        def update(table: str, done: int, total: int) -> None:
            if table not in tasks:
                tasks[table] = bars.add_task(f"copy {table}", total=total)
            bars.update(tasks[table], completed=done)

        yield update
