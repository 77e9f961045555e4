"""The name a person recognises a replica by: its owner and a short id, e.g. `alex-field-1a2b3c4d`.

Checkout stores it with the replica (`sync_replica.partition_key`, unique), so a sync never has to
write the master to name a replica: a refused sync leaves the master as it was. The Dagster shell uses
the name as the replica's partition key.
"""

from __future__ import annotations

import re
import unicodedata

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from sync_pipeline.engine import store

OWNER_SLUG_LENGTH = 40
SHORT_ID_LENGTH = 8


def owner_slug(owner: str) -> str:
    """`Jürgen Groß` -> `jurgen-gro`: lowercase ASCII letters and digits joined by single dashes."""
    ascii_text = unicodedata.normalize("NFKD", owner).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")
    return slug[:OWNER_SLUG_LENGTH].rstrip("-") or "replica"


def candidate_names(owner: str, replica_id: str) -> list[str]:
    """Names to try in order: 8 hex digits of the id, then longer ones should another replica of the same
    owner share the prefix."""
    hex_id = replica_id.replace("-", "")
    lengths = range(SHORT_ID_LENGTH, len(hex_id) + 1, 4)
    return [f"{owner_slug(owner)}-{hex_id[:n]}" for n in lengths] + [f"{owner_slug(owner)}-{replica_id}"]


def free_name(conn: Connection, owner: str, replica_id: str) -> str:
    """The first candidate no other replica of this master holds (read in the registering transaction)."""
    candidates = candidate_names(owner, replica_id)
    table = store.sync_replica
    taken = set(conn.execute(sa.select(table.c.partition_key).where(table.c.partition_key.in_(candidates))).scalars())
    return next(name for name in candidates if name not in taken)
