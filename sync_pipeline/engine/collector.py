"""Python's cyclic garbage collector paused while a sync's bookkeeping runs.

Extraction, detection, the stored session and the load allocate hundreds of thousands of small dicts
and tuples that hold no reference cycles. Each allocation burst triggers the collector, whose passes
over everything alive took a quarter of the CPU of a 10,000-change sync (bench/bench_sync.py). Reference
counting still frees every row as soon as it is dropped; only cycles wait, and they are collected when
the outermost pause ends.
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_depth = 0
_was_enabled = False


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic collector for the block; nested and concurrent pauses resume it once, at the end
    of the last, and only if it was running before the first."""
    global _depth, _was_enabled
    with _lock:
        if _depth == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0 and _was_enabled:
                gc.enable()
