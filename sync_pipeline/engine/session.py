"""A session's public API, in one import: extract -> detect -> resolve -> (wait) -> load -> retire.

The session is split by responsibility: its state on the master (`session_state`), extraction and
detection (`session_detect`), decisions by policies and people (`session_decide`), the load
(`session_apply`), and the one driver that chains them for every shell (`run_driver`). Callers import
from here; the modules import each other, never this one.
"""

from sync_pipeline.engine.records import DECIDABLE_STATUSES, OPEN_STATUSES
from sync_pipeline.engine.run_driver import RunDriver, open_run, run_sync
from sync_pipeline.engine.session_apply import MAX_REDETECT_ROUNDS, load_session, load_with_redetection
from sync_pipeline.engine.session_decide import decide, decide_module, resolve_session
from sync_pipeline.engine.session_detect import begin_session, detect_session, dry_run, start_session
from sync_pipeline.engine.session_state import (
    SessionContext,
    SyncResult,
    counts_of,
    last_session_of,
    load_changes,
    mark_failed,
    open_session_of,
    pending_of,
    session_context,
)

__all__ = [
    "DECIDABLE_STATUSES",
    "MAX_REDETECT_ROUNDS",
    "OPEN_STATUSES",
    "RunDriver",
    "SessionContext",
    "SyncResult",
    "begin_session",
    "counts_of",
    "decide",
    "decide_module",
    "detect_session",
    "dry_run",
    "last_session_of",
    "load_changes",
    "load_session",
    "load_with_redetection",
    "mark_failed",
    "open_run",
    "open_session_of",
    "pending_of",
    "resolve_session",
    "run_sync",
    "session_context",
    "start_session",
]
