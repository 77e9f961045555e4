"""The sync protocol's data model: one session, as the renderers and the JSON format see it.

The model's field names are the protocol's JSON field names (documented in docs/protocol.md): renaming
one is a breaking change of the public format. `engine.protocol` builds it; `engine.conflict_records`
reads the conflicts in it (also for the conflict history).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

PROTOCOL_VERSION = 1
KIND_ORDER = ("update_update", "update_delete", "delete_update", "insert_insert", "duplicate", "orphan")
BATCH = 500

# What a decision means for the master row (docs/sync_rules.md §4), said the way the protocol's reader needs it.
OUTCOMES: dict[str, dict[str, str]] = {
    "update_update": {
        "master": "the master's values stay",
        "local": "the local values were written",
        "value": "an edited value was written",
        "mixed": "decided field by field (see each field)",
    },
    "update_delete": {
        "master": "the row stays deleted, as on the master",
        "local": "the row was re-inserted: base values plus the local changes",
    },
    "delete_update": {
        "master": "the row stays, with the master's values",
        "local": "the row was deleted, as on the replica",
    },
    "insert_insert": {
        "master": "the master's row stays; the local insert was dropped",
        "local": "the master's row was overwritten with the local row",
        "mixed": "the master's row got the local value of each field taken from local",
    },
    "duplicate": {
        "master": "the local row is the master's row: the local insert was dropped and references point at it",
        "local": "the local values were written into the master's row (the same record)",
        "mixed": "the master's row (the same record) got the local value of each field taken from local",
    },
    "orphan": {
        "master": "the local row was dropped: its parent is deleted on the master",
        "local": "the parent was re-created from the master's tombstone of it (its values when the master "
        "deleted it), then the local row written",
    },
}


# ------------------------------------------------------------------------------------------------
# The model (field names = JSON names)
# ------------------------------------------------------------------------------------------------


@dataclass
class FieldOutcome:
    """One compared field of a conflict: the three versions, what was taken and what the master holds."""

    name: str
    base: Any
    local: Any
    master: Any
    take: str | None  # local | master | value; None while undecided
    kept: Any  # loaded: the value in the master after the load (None: no row); else what the decision would write
    rule: str | None  # the policy that decided this field, or 'person'
    decided_by: str | None
    decided_at: str | None


@dataclass
class DecisionRecord:
    """One row of a conflict's decision history (oldest first)."""

    field: str | None  # None: the whole row
    take: str
    value: Any
    rule: str
    decided_by: str | None
    decided_at: str


@dataclass
class ConflictRecord:
    id: int
    session: str
    module: str
    table: str
    key: dict[str, Any]  # the row's key in the replica
    master_key: dict[str, Any] | None  # the master row it went to, when that key differs (duplicate, remap)
    kind: str
    policy: str
    status: str  # pending | decided
    take: str | None  # local | master | value | mixed; None while pending
    outcome: str
    loaded: bool
    rule: str | None  # of the latest decision: the policy, or 'person'
    decided_by: str | None
    decided_at: str | None
    created_at: str
    fields: list[FieldOutcome]
    history: list[DecisionRecord]
    detail: dict[str, Any]
    # The sides (base, local, master, kept) that have no row: their field values are null without being NULL.
    no_row: list[str] = field(default_factory=list)


@dataclass
class KeyRemap:
    table: str
    local_key: dict[str, Any]
    master_key: dict[str, Any]
    reason: str  # key_taken: the generated key was taken on the master | duplicate: the same record exists


@dataclass
class DroppedRow:
    table: str
    key: dict[str, Any]
    reason: str


@dataclass
class OpCounts:
    inserts: int = 0
    updates: int = 0
    deletes: int = 0

    def add(self, op: str, count: int = 1) -> None:
        setattr(self, f"{op}s", getattr(self, f"{op}s") + count)

    @property
    def total(self) -> int:
        return self.inserts + self.updates + self.deletes


@dataclass
class ModuleProtocol:
    name: str
    policy: str
    tables: dict[str, str]  # table -> the policy in force for it
    local_changes: OpCounts
    applied: OpCounts
    remapped: list[KeyRemap]
    dropped: list[DroppedRow]
    conflicts_total: int
    conflicts_pending: int
    conflicts_by_kind: dict[str, int]
    decisions_by_rule: dict[str, int]  # conflicts by the rule of their final decision ('person' for people)
    decisions_by_person: dict[str, int]  # conflicts by the person who took their final decision


@dataclass
class SessionHeader:
    id: str
    status: str  # extracted|detected|waiting|ready|loading|done|failed
    started_at: str
    finished_at: str | None
    duration_seconds: float | None
    dagster_run_id: str | None
    error: str | None


@dataclass
class ReplicaHeader:
    id: str
    owner: str
    modules: list[str]
    checked_out_at: str
    status: str
    retired_at: str | None
    path: str | None


@dataclass
class SettingsInForce:
    """The settings frozen into the replica at checkout: what decided this session."""

    yaml: str
    retention_days: int | None
    master_change_capture: bool | None
    modules: dict[str, dict[str, Any]]  # module -> {policy, tables: {table: policy}}


@dataclass
class Totals:
    local_changes: int
    inserts: int
    updates: int
    deletes: int
    conflicts: int
    pending: int
    remapped: int
    dropped: int


@dataclass
class Protocol:
    protocol_version: int
    generated_at: str
    state: str  # done | empty | waiting | in_progress | failed
    notice: str
    session: SessionHeader
    replica: ReplicaHeader
    settings: SettingsInForce
    deciders: dict[str, dict[str, int]]  # {"rules": {rule: n}, "people": {name: n}} over final decisions
    totals: Totals
    modules: list[ModuleProtocol]
    conflicts: list[ConflictRecord]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    def conflicts_of(self, module: str) -> list[ConflictRecord]:
        return [c for c in self.conflicts if c.module == module]
