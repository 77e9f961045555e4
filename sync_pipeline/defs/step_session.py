"""How every step of the sync begins: the partition's replica and session, read from the master's sync
tables (and shared by the steps of one run), the cyclic collector paused while a step's body runs
(`collector_paused_in_step`), and the metadata helpers the steps and their checks use.

Apart from the assets (defs/assets.py) so that the checks evaluated inside the asset steps
(defs/checks.py, defs/waiting_check.py) and their suites (defs/check_suites.py) use the same helpers
without importing the assets that call them.
"""

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import dagster as dg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync_pipeline.defs.partitions import replica_id_of_partition
from sync_pipeline.defs.resources import MasterDatabase
from sync_pipeline.engine.collector import collector_paused
from sync_pipeline.engine.records import latest_session
from sync_pipeline.engine.schema import TableInfo
from sync_pipeline.engine.session_state import SessionContext, counts_of, session_context

_STEP = TypeVar("_STEP", bound=Callable[..., Any])


def collector_paused_in_step(step: _STEP) -> _STEP:
    """Run an asset's body with the cyclic collector paused (engine/collector.py), as `run_sync` runs the
    engine's steps: the checks' frames and the protocol allocate tens of thousands of small objects with no
    cycles, and each collection would also walk what the run keeps alive for its later steps (the detected
    changes in `run_state`), which the engine path frees before the collector runs. The driver's own pause
    nests inside this one. For a generator body the pause covers each of its advances, not Dagster's
    handling of what it yields, so no pause outlives a step whose generator Dagster stops early."""
    if inspect.isgeneratorfunction(step):

        @functools.wraps(step)
        def generating(*args: Any, **kwargs: Any) -> Iterator[Any]:
            inner = step(*args, **kwargs)
            try:
                while True:
                    with collector_paused():
                        try:
                            item = next(inner)
                        except StopIteration:
                            return
                    yield item
            finally:
                inner.close()

        return generating  # type: ignore[return-value]

    @functools.wraps(step)
    def returning(*args: Any, **kwargs: Any) -> Any:
        with collector_paused():
            return step(*args, **kwargs)

    return returning  # type: ignore[return-value]


def require_replica_id(engine: Engine, partition_key: str) -> str:
    """The replica a partition names, by the master's own record of partition keys."""
    replica_id = replica_id_of_partition(engine, partition_key)
    if replica_id is None:
        raise dg.Failure(
            description=f"partition {partition_key} names no replica of this master",
            metadata={
                "fix": "check out the replica from this master, or set SYNC_MASTER_URL to the master it came from"
            },
        )
    return replica_id


def require_session(engine: Engine, partition_key: str, shared: dict[str, Any] | None = None) -> SessionContext:
    """The partition's latest session. `shared`: what the steps of one run share in this process
    (`MasterDatabase.run_state`); a context an earlier step of the run built is taken from there, with
    the status the master records now, instead of being rebuilt (settings parsed, tables reflected)."""
    replica_id = require_replica_id(engine, partition_key)
    session = latest_session(engine, replica_id)
    if session is None:
        raise dg.Failure(
            description=f"replica {partition_key} has no session on this master yet",
            metadata={"fix": "materialize local_changes for this partition first (job sync_detect)"},
        )
    known = (shared or {}).get(_SESSION)
    if isinstance(known, SessionContext) and known.session_id == session["session_id"]:
        known.status = session["status"]
        return known
    ctx = session_context(engine, session["session_id"])
    share_session(shared, ctx)
    return ctx


_SESSION = "session"  # the key of the run's session context in MasterDatabase.run_state()


def share_session(shared: dict[str, Any] | None, ctx: SessionContext) -> None:
    """Hand `ctx` to the later steps of the run: its reflected tables and settings, and, right after
    detection, the detected changes the policies and the load use instead of reading them back (as
    `run_sync` hands them from step to step)."""
    if shared is not None:
        shared[_SESSION] = ctx


_COUNTS = "counts"  # what local_changes counted of the run's session, for conflicts


def count_and_keep(engine: Engine, session_id: str, shared: dict[str, Any]) -> dict[str, dict[str, int]]:
    """`counts_of` the session (changes per operation, conflicts per kind, per module), kept in `shared` for
    the conflicts step of the same run (`kept_counts`)."""
    counts = counts_of(engine, session_id)
    shared[_COUNTS] = (session_id, counts)
    return counts


def kept_counts(
    engine: Engine, session_id: str, shared: dict[str, Any], detected_now: bool
) -> dict[str, dict[str, int]]:
    """The session's counts as local_changes counted them in this run, instead of counting the same 10,000
    changes again: until the load, a detected session's changes and conflicts stay as stored. Counted
    afresh when the step has just detected the session itself, or nothing was kept for it."""
    known = shared.pop(_COUNTS, None)
    if known is not None and known[0] == session_id and not detected_now:
        return known[1]
    return counts_of(engine, session_id)


@contextmanager
def partition_session(
    master: MasterDatabase, context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext
) -> Iterator[tuple[Engine, SessionContext]]:
    """The master's engine and the session of the run's partition: how every step and check begins."""
    with master.engine() as engine:
        yield engine, require_session(engine, context.partition_key, master.run_state())


def table_row_counts(engine: Engine, infos: dict[str, TableInfo]) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            name: conn.execute(sa.select(sa.func.count()).select_from(info.table)).scalar_one()
            for name, info in infos.items()
        }


def counts_metadata(counts: dict[str, dict[str, int]], prefix: str = "") -> dict[str, dg.MetadataValue]:
    """`crm/update_update: 3` as numeric metadata, so the UI plots each count across runs."""
    return {
        f"{prefix}{module}/{kind}": dg.MetadataValue.int(int(value))
        for module, kinds in sorted(counts.items())
        for kind, value in sorted(kinds.items())
    }


def pending_metadata(pending: dict[str, int]) -> dict[str, dg.MetadataValue]:
    out = {f"pending/{module}": dg.MetadataValue.int(count) for module, count in sorted(pending.items())}
    out["pending_total"] = dg.MetadataValue.int(sum(pending.values()))
    return out


def pending_summary(pending: dict[str, int]) -> str:
    """`5 manual decisions pending: crm 5`."""
    total = sum(pending.values())
    noun = "decision" if total == 1 else "decisions"
    return f"{total} manual {noun} pending: " + ", ".join(f"{m} {n}" for m, n in sorted(pending.items()))


def session_metadata(ctx: SessionContext | dict[str, Any]) -> dict[str, dg.MetadataValue]:
    session_id = ctx.session_id if isinstance(ctx, SessionContext) else ctx["session_id"]
    return {"session_id": dg.MetadataValue.text(session_id)}


def retired_failure(record: dict[str, Any], session_id: str | None) -> dg.Failure:
    """A launch of a retired replica: the readable reason, for the run's failure."""
    return dg.Failure(
        description=f"replica {record['partition_key'] or record['replica_id']} ({record['owner']}) was synchronised "
        f"and retired at {record['retired_at']}; a replica is synchronised only once",
        metadata={
            "session_id": dg.MetadataValue.text(session_id or ""),
            "fix": dg.MetadataValue.text(
                "nothing to do: its sessions and protocol stay on the master (`sync-pipeline history`, "
                "`protocol`); for new work check out a new replica with `sync-pipeline checkout`"
            ),
        },
        allow_retries=False,
    )
