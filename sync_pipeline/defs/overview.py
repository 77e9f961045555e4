"""What the master side looks at besides single syncs: who is offline (an asset whose table metadata
lists every replica) and the retention purge of the sync tables (a daily schedule).
"""

import dagster as dg

from sync_pipeline.defs.resources import MasterDatabase
from sync_pipeline.engine.records import ReplicaStatus

OVERVIEW_GROUP = "overview"


@dg.asset(
    group_name=OVERVIEW_GROUP,
    description="Every replica checked out from the master: owner, modules, checked out since, status "
    "(offline, syncing, waiting, retired, failed). Materialize it to refresh the table.",
)
def offline_replicas(master: MasterDatabase) -> dg.MaterializeResult:
    from sync_pipeline.engine.queries import list_replicas

    with master.engine() as engine:
        replicas = list_replicas(engine)
    columns = ["replica_id", "owner", "modules", "checked_out_at", "status", "retired_at"]
    records = [
        dg.TableRecord({**{c: str(r[c] or "") for c in columns}, "modules": ", ".join(r["modules"])}) for r in replicas
    ]
    by_status: dict[str, int] = {}
    for replica in replicas:
        by_status[replica["status"]] = by_status.get(replica["status"], 0) + 1
    return dg.MaterializeResult(
        metadata={
            "replicas": dg.MetadataValue.table(
                records, schema=dg.TableSchema(columns=[dg.TableColumn(c, "string") for c in columns])
            ),
            "out": dg.MetadataValue.int(sum(n for s, n in by_status.items() if s != ReplicaStatus.RETIRED)),
            **{f"status/{status}": dg.MetadataValue.int(n) for status, n in sorted(by_status.items())},
        }
    )


@dg.op(description="Delete sync history older than the settings' retention_days (default 90); open sessions stay.")
def purge_sync_tables(context: dg.OpExecutionContext, master: MasterDatabase) -> dg.Output[dict[str, int]]:
    from sync_pipeline.engine.retention import purge_sync_history

    with master.engine() as engine:
        counts = purge_sync_history(engine)
    context.log.info("purged: " + (", ".join(f"{t} {n}" for t, n in counts.items()) or "nothing"))
    return dg.Output(counts, metadata={f"deleted/{t}": dg.MetadataValue.int(n) for t, n in counts.items()})


@dg.job(description="Purge the master's sync tables of history older than the retention.")
def sync_purge() -> None:
    purge_sync_tables()


purge_schedule = dg.ScheduleDefinition(
    job=sync_purge,
    cron_schedule="30 3 * * *",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Daily at 03:30: the retention purge of the sync tables.",
)
