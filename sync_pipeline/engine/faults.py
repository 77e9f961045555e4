"""Fault injection for the crash-safety tests: named points where a test may kill the process.

`checkpoint(name)` does nothing unless the environment variable `SYNC_FAULT` is set. When it equals
`name`, the process kills itself with SIGKILL the first time the point is reached; `name:N` kills it
the N-th time. No cleanup, no `finally`, no exit handlers run: the same as a power cut or an OOM kill.
The points, in the order a session reaches them, are listed in `POINTS` and in docs/reliability.md.

Any other value of `SYNC_FAULT` only counts how often each point is reached (`reached()`), which
the tests use to aim their kills.
"""

from __future__ import annotations

import os
import signal

POINTS = (
    "init_capture",  # master.init_master: after each table's change-capture triggers (before the commit)
    "freeze",  # replica file: before COMMIT of freezing (start) or retiring it (end)
    "extract",  # extract.extract_changes: per change-log entry read
    "extract_store",  # session.start_session: the session and its changes written, not committed
    "detect",  # detect.detect_conflicts: per table detected
    "detect_store",  # session.detect_session: detection written, not committed
    "decide",  # session.resolve_session: per conflict a policy decided, not committed
    "decide_person",  # session_decide._record_decision: a person's decision written, not committed
    "load_begin",  # session.load_session: status `loading` committed, load transaction not begun
    "load_write",  # load.execute_plan: after each batch of master writes
    "load_commit",  # session.load_session: everything written, session done, not committed
    "retire",  # run_driver.RunDriver.retire_file: load committed, replica file not retired yet
    "protocol",  # protocol.build_protocol: reading the session to write its protocol
)

_counts: dict[str, int] = {}


def checkpoint(name: str) -> None:
    """Die here (SIGKILL) if `SYNC_FAULT` names this point (and its count); otherwise do nothing."""
    spec = os.environ.get("SYNC_FAULT")
    if not spec:
        return
    count = _counts.get(name, 0) + 1
    _counts[name] = count
    point, _, nth = spec.partition(":")
    if point == name and count == (int(nth) if nth else 1):
        os.kill(os.getpid(), signal.SIGKILL)


def armed() -> bool:
    """Whether fault injection is on: hot loops ask once, then call `checkpoint` only if so."""
    return bool(os.environ.get("SYNC_FAULT"))


def reached() -> dict[str, int]:
    """How often each point was reached in this process (counted only while `SYNC_FAULT` is set)."""
    return dict(_counts)


def reset() -> None:
    _counts.clear()
