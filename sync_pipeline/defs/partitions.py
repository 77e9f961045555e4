"""One dynamic partition per replica that is still out, keyed by a name a person recognises.

The key is the owner and a short id, e.g. `alex-field-1a2b3c4d`, stored on the master with the
replica (`sync_replica.partition_key`, unique), so the mapping key -> replica id is the master's,
never a guess. Partitions of replicas from before keys had names are their bare replica id; both
forms resolve. Retired replicas leave the partition set; their sessions and protocols stay on the
master.
"""

from __future__ import annotations

import dagster as dg
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from sync_pipeline.engine import store
from sync_pipeline.engine.replica_names import candidate_names

REPLICAS_PARTITION_NAME = "replicas"

replicas_partitions = dg.DynamicPartitionsDefinition(name=REPLICAS_PARTITION_NAME)


def partition_key_of(engine: Engine, replica_id: str) -> str:
    """The replica's partition key: named at checkout; a replica from before names gets one here, once."""
    table = store.sync_replica
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(table.c.owner, table.c.partition_key).where(table.c.replica_id == replica_id)
        ).first()
    if row is None:
        raise LookupError(f"replica {replica_id} is not registered on this master")
    if row.partition_key:
        return str(row.partition_key)
    for key in candidate_names(row.owner, replica_id):
        try:
            with engine.begin() as conn:
                named = conn.execute(
                    sa.update(table)
                    .where(table.c.replica_id == replica_id, table.c.partition_key.is_(None))
                    .values(partition_key=key)
                ).rowcount
        except IntegrityError:
            continue  # another replica holds this key: try a longer one
        if named:
            return key
        break  # a concurrent caller named it first: read its key
    with engine.connect() as conn:
        stored = conn.execute(sa.select(table.c.partition_key).where(table.c.replica_id == replica_id)).scalar_one()
    if not stored:
        raise LookupError(f"replica {replica_id} could not be given a partition key")
    return str(stored)


def replica_id_of_partition(engine: Engine, partition_key: str) -> str | None:
    """The replica a partition key names: its stored key, else (partitions from before named keys) its id."""
    table = store.sync_replica
    with engine.connect() as conn:
        found = conn.execute(sa.select(table.c.replica_id).where(table.c.partition_key == partition_key)).scalar()
        if found is None:
            found = conn.execute(sa.select(table.c.replica_id).where(table.c.replica_id == partition_key)).scalar()
    return str(found) if found is not None else None


def ensure_partition(engine: Engine, instance: dg.DagsterInstance, replica_id: str) -> str:
    """The replica's partition key, added to the instance's partitions if missing (for runs from the CLI)."""
    key = partition_key_of(engine, replica_id)
    if not instance.has_dynamic_partition(REPLICAS_PARTITION_NAME, key):
        instance.add_dynamic_partitions(REPLICAS_PARTITION_NAME, [key])
    return key


def replica_partitions(engine: Engine) -> tuple[list[str], set[str]]:
    """(keys of the replicas still out, in checkout order; stale keys: those of retired replicas, and bare
    replica ids, the keys from before partitions had names). Replicas without a key are named here, once."""
    table = store.sync_replica
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(table.c.replica_id, table.c.partition_key, table.c.status).order_by(table.c.checked_out_at)
        ).all()
    out: list[str] = []
    stale: set[str] = set()
    for replica_id, key, status in rows:
        stale.add(replica_id)
        if status == "retired":
            stale.update([key] if key else [])
        else:
            out.append(key or partition_key_of(engine, replica_id))
    return out, stale
