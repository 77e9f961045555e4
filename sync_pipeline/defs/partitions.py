"""One dynamic partition per replica: the partition key is the replica id from its manifest."""

from __future__ import annotations

import dagster as dg

REPLICAS_PARTITION_NAME = "replicas"

replicas_partitions = dg.DynamicPartitionsDefinition(name=REPLICAS_PARTITION_NAME)
