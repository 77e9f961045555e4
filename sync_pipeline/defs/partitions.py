"""One dynamic partition per replica that is still out, keyed by a name a person recognises.

The key is the owner and a short id, e.g. `alex-field-1a2b3c4d`, stored on the master with the
replica (`sync_replica.partition_key`, unique), so the mapping key -> replica id is the master's,
never a guess. Partitions of replicas from before keys had names are their bare replica id; both
forms resolve. Retired replicas leave the partition set; their sessions and protocols stay on the
master.
"""

from __future__ import annotations

import dagster as dg
from sqlalchemy.engine import Engine

from sync_pipeline.engine import records
from sync_pipeline.engine.records import ReplicaStatus
from sync_pipeline.engine.replica_names import candidate_names

REPLICAS_PARTITION_NAME = "replicas"

replicas_partitions = dg.DynamicPartitionsDefinition(name=REPLICAS_PARTITION_NAME)


def partition_key_of(engine: Engine, replica_id: str) -> str:
    """The replica's partition key: named at checkout; a replica from before names gets one here, once."""
    found = records.replica_owner_and_key(engine, replica_id)
    if found is None:
        raise LookupError(f"replica {replica_id} is not registered on this master")
    owner, key = found
    if key:
        return key
    for candidate in candidate_names(owner, replica_id):
        named = records.claim_partition_key(engine, replica_id, candidate)
        if named is None:
            continue  # another replica holds this key: try a longer one
        if named:
            return candidate
        break  # a concurrent caller named it first: read its key
    stored = records.stored_partition_key(engine, replica_id)
    if not stored:
        raise LookupError(f"replica {replica_id} could not be given a partition key")
    return stored


def replica_id_of_partition(engine: Engine, partition_key: str) -> str | None:
    """The replica a partition key names: its stored key, else (partitions from before named keys) its id."""
    return records.replica_of_partition(engine, partition_key)


def ensure_partition(engine: Engine, instance: dg.DagsterInstance, replica_id: str) -> str:
    """The replica's partition key, added to the instance's partitions if missing (for runs from the CLI)."""
    key = partition_key_of(engine, replica_id)
    if not instance.has_dynamic_partition(REPLICAS_PARTITION_NAME, key):
        instance.add_dynamic_partitions(REPLICAS_PARTITION_NAME, [key])
    return key


def replica_partitions(engine: Engine) -> tuple[list[str], set[str]]:
    """(keys of the replicas still out, in checkout order; stale keys: those of retired replicas, and bare
    replica ids, the keys from before partitions had names). Replicas without a key are named here, once."""
    out: list[str] = []
    stale: set[str] = set()
    for replica_id, key, status in records.replica_keys(engine):
        stale.add(replica_id)
        if status == ReplicaStatus.RETIRED:
            stale.update([key] if key else [])
        else:
            out.append(key or partition_key_of(engine, replica_id))
    return out, stale
