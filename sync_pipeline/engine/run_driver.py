"""The one driver of a sync: open and verify the replica once, recover what an interrupted sync left,
start or continue the session, detect, resolve, load, retire the file after the commit, and say what
happened (`SyncResult`).

Every shell drives a sync through it: `run_sync` (the CLI's `--without-dagster` path) chains the steps
in one call, each Dagster asset calls one step, and `materialize_sync` holds the driver it opened
(`holding`) so that the runs it launches in this process use the replica it verified instead of
opening and checking the file again.

How the session's state changes on failure is decided here only: an unexpected error marks the session
failed (bad input leaves it as it was: nothing was written), and a load that committed is never undone
by what fails after it (retiring the file, a report): the sync is done, and a file left unretired is
retired the next time the replica is opened.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy.engine import Engine

from sync_pipeline.engine import store
from sync_pipeline.engine.collector import collector_paused
from sync_pipeline.engine.errors import BadInputError, SyncError
from sync_pipeline.engine.faults import checkpoint
from sync_pipeline.engine.records import ReplicaStatus, SessionStatus, replica_record_by_path
from sync_pipeline.engine.replica import OpenReplica, open_replica, retire_replica
from sync_pipeline.engine.session_apply import load_with_redetection
from sync_pipeline.engine.session_decide import resolve_session
from sync_pipeline.engine.session_detect import begin_session, detect_session
from sync_pipeline.engine.session_state import (
    SessionContext,
    SyncResult,
    counts_of,
    last_session_of,
    mark_failed,
    open_session_of,
    pending_of,
    record_replica_path,
    session_context,
)

Progress = Callable[[str], None]

LOAD_LEFT_CONFLICTS = "the master changed during the load; new conflicts wait for decisions"
WAITING = "waiting for manual decisions"


@contextmanager
def failing_marks_session(engine: Engine, ctx: SessionContext) -> Iterator[None]:
    """An unexpected error ends the session as failed (its replica unfrozen, to be corrected and synced
    again); bad input leaves it as it was, since nothing was written."""
    try:
        yield
    except BadInputError:
        raise
    except Exception as exc:
        mark_failed(engine, ctx.session_id, ctx.replica_id, f"{type(exc).__name__}: {exc}")
        raise


def resolve_step(engine: Engine, ctx: SessionContext) -> dict[str, int]:
    """Policies decide what they can; returns the conflicts pending per module (empty: ready to load).

    Only right after detection do policies run: resolving again would bump the decision version and
    make approval_sensor launch the same load once more. Needs no replica."""
    if ctx.status != SessionStatus.DETECTED:
        return pending_of(engine, ctx.session_id)
    with failing_marks_session(engine, ctx):
        pending = resolve_session(engine, ctx)
    ctx.status = SessionStatus.WAITING if pending else SessionStatus.READY
    return pending


class RunDriver:
    """One sync's hold on its replica, opened and verified once by `open_run`; a context manager that
    closes the file."""

    def __init__(self, engine: Engine, replica: OpenReplica, progress: Progress | None = None) -> None:
        self.engine = engine
        self.replica = replica
        self.say: Progress = progress or (lambda _message: None)
        # Set when opening finished the sync: its load had committed, only the file's retirement was left.
        self.finished: SyncResult | None = None
        self.notes: list[str] = []  # what went wrong after the commit, for the result's message
        self._retire_attempted = False
        self.continued = False  # `start` continued a session opened before, instead of starting one

    @property
    def replica_id(self) -> str:
        return self.replica.manifest.replica_id

    def close(self) -> None:
        self.replica.close()

    def __enter__(self) -> RunDriver:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    # -- the steps --------------------------------------------------------------------------------

    @collector_paused()
    def start(self, dagster_run_id: str | None = None) -> SessionContext:
        """The replica's session, detected: a new one (extracted and detected in memory, then stored in
        one transaction), or the one already open for the replica, continued."""
        existing = open_session_of(self.engine, self.replica_id)
        path = str(self.replica.path.resolve())
        if existing is None:
            self.say("extracting local changes and detecting conflicts")
            session_id, detected = begin_session(self.engine, self.replica, dagster_run_id, detect=True)
            # Just stored from this replica: its settings and reflected tables are the session's.
            replica = self.replica
            ctx = SessionContext(
                session_id, self.replica_id, path, replica.settings, replica.infos, SessionStatus.DETECTED
            )
            ctx.cached_detected = detected
            return ctx
        self.continued = True
        self.say(f"continuing session {existing['session_id']} ({existing['status']})")
        record_replica_path(self.engine, self.replica_id, path)
        ctx = session_context(self.engine, existing["session_id"])
        self.detect(ctx)
        return ctx

    @collector_paused()
    def detect(self, ctx: SessionContext) -> None:
        """Detection of a session stored before it was detected (by `start_session`, or older code)."""
        if ctx.status != SessionStatus.EXTRACTED:
            return
        self.say("detecting conflicts")
        with failing_marks_session(self.engine, ctx):
            detect_session(self.engine, ctx, self.replica.row)
        ctx.status = SessionStatus.DETECTED

    @collector_paused()
    def resolve(self, ctx: SessionContext) -> dict[str, int]:
        if ctx.status == SessionStatus.DETECTED:
            self.say("applying policies")
        return resolve_step(self.engine, ctx)

    @collector_paused()
    def load(self, ctx: SessionContext, dagster_run_id: str | None = None) -> dict[str, Any] | None:
        """Load; rows the master changed meanwhile go back to detection. After the commit the file is
        retired. Returns the load's summary, or None when re-detection left conflicts waiting."""
        self.say("loading into the master")
        with failing_marks_session(self.engine, ctx):
            summary = load_with_redetection(self.engine, ctx, self.replica.row, dagster_run_id)
        if summary is not None:
            self.retire_file()
        return summary

    def retire_file(self) -> None:
        """Retire the file of the replica whose load committed (once). A failure here cannot undo the
        load, and the master's record refuses the replica from now on: the sync is done, with a note."""
        if self._retire_attempted:
            return
        self.close()
        checkpoint("retire")  # the crash-safety tests aim here
        self._retire_attempted = True
        try:
            retire_replica(self.engine, self.replica, store.now_iso())
        except (OSError, SyncError) as exc:
            self.notes.append(f"the replica file could not be marked retired ({exc}); the master refuses it anyway")

    # -- results ----------------------------------------------------------------------------------

    def done(self, session_id: str | None, notes: list[str] | None = None) -> SyncResult:
        message = "; ".join(["synchronised", *self.notes, *(notes or [])])
        counts = counts_of(self.engine, session_id) if session_id else {}
        return SyncResult(session_id, self.replica_id, SessionStatus.DONE, counts, {}, message)

    def waiting(self, session_id: str, message: str = WAITING) -> SyncResult:
        counts = counts_of(self.engine, session_id)
        return SyncResult(
            session_id, self.replica_id, SessionStatus.WAITING, counts, pending_of(self.engine, session_id), message
        )

    @collector_paused()  # one pause for all steps: the collector's pass after each would visit every row
    def run(self) -> SyncResult:
        """The whole session in this process: to its end, or until it waits for decisions."""
        if self.finished is not None:
            return self.finished
        ctx = self.start()
        if self.resolve(ctx):
            return self.waiting(ctx.session_id)
        if self.load(ctx) is None:
            return self.waiting(ctx.session_id, LOAD_LEFT_CONFLICTS)
        return self.done(ctx.session_id)


def open_run(engine: Engine, replica_path: str | Path, progress: Progress | None = None) -> RunDriver:
    """The replica opened and fully verified: the one time in this run. A replica whose load committed
    but whose file the ending process did not retire is retired here, and `finished` says it is done."""
    replica = open_replica(engine, replica_path, allow_retired=True)
    driver = RunDriver(engine, replica, progress)
    if replica.record["status"] != ReplicaStatus.RETIRED:
        return driver
    # open_replica let it through: the master's record says loaded, file not yet retired. The file's own
    # status is not asked: the master's record decides, and retiring twice is harmless.
    driver.close()
    done = last_session_of(engine, driver.replica_id)
    retire_replica(engine, replica)  # dated by the master's record of the retirement
    driver.finished = driver.done(done)
    return driver


def run_sync(engine: Engine, replica_path: str | Path, progress: Progress | None = None) -> SyncResult:
    """Run (or continue) the session of a replica to its end or until it waits for decisions."""
    with open_run(engine, replica_path, progress) as driver:
        return driver.run()


def finish_retirement(engine: Engine, path: str | None) -> bool:
    """Retire the file of a loaded session if an interrupted run left it open; True if it had to be done.

    Opens the file only when the master's record says the load committed and the file's retirement is
    not on record yet (otherwise the master refuses the file anyway)."""
    if not path or not Path(path).is_file():
        return False
    record = replica_record_by_path(engine, str(path))
    if record is not None and (record["status"] != ReplicaStatus.RETIRED or record["file_retired_at"] is not None):
        return False  # not loaded, or its file's retirement is on record already (the master refuses it now)
    replica = open_replica(engine, path, allow_retired=True)
    replica.close()
    if replica.record["status"] != ReplicaStatus.RETIRED:
        return False
    retire_replica(engine, replica)
    return True


# -- the driver held for the runs this process launches ---------------------------------------------

_held: dict[str, RunDriver] = {}


@contextmanager
def holding(driver: RunDriver) -> Iterator[RunDriver]:
    """Hand `driver` to the steps this process runs while the block runs (the in-process runs of
    `materialize_sync`): they use its verified replica instead of opening the file again. Process-wide,
    like the progress listeners, because no argument of ours reaches a Dagster step."""
    _held[driver.replica_id] = driver
    try:
        yield driver
    finally:
        _held.pop(driver.replica_id, None)


@contextmanager
def driver_for(engine: Engine, replica_id: str, path: str) -> Iterator[RunDriver]:
    """A step's driver: the one this process holds for the replica, else the file at `path` opened and
    verified for the step (and closed after it)."""
    held = _held.get(replica_id)
    if held is not None:
        yield held
        return
    with open_run(engine, path) as driver:
        yield driver
