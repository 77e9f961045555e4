"""Policies -> decisions (docs/sync_rules.md §4). `manual` leaves a conflict pending for a person.

A decision is a choice per field (`local`, `master`, or an edited `value`) or for the whole row. The
history of decisions is kept; the current decision of a field is the latest one that covers it (a
row decision covers every field).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sync_pipeline.engine import records
from sync_pipeline.engine.detect import Detected
from sync_pipeline.engine.errors import DecisionError

FIELD_KINDS = frozenset({"update_update", "insert_insert", "duplicate"})  # compared field by field
VALUE_KINDS = frozenset({"update_update"})  # a typed value is allowed


# What a conflict kind means and what each side's choice does to the master (docs/sync_rules.md §4), in the
# words the review page and `conflicts show` use.
KIND_HELP: dict[str, dict[str, str]] = {
    "update_update": {
        "title": "Changed on both sides",
        "what": "The same field(s) changed locally and in the master since checkout.",
        "local": "write the local value",
        "master": "keep the master's value (the local changes of other fields still apply)",
    },
    "update_delete": {
        "title": "Changed locally, deleted in the master",
        "what": "The row was edited on the laptop while someone deleted it in the master.",
        "local": "re-insert the row: its values at checkout plus the local changes",
        "master": "the row stays deleted",
    },
    "delete_update": {
        "title": "Deleted locally, changed in the master",
        "what": "The row was deleted on the laptop while someone changed it in the master.",
        "local": "delete it in the master (with the rows the replica deleted along with it)",
        "master": "the row stays, with the master's values",
    },
    "insert_insert": {
        "title": "Inserted on both sides under the same key",
        "what": "The laptop and the master both created a row with this key.",
        "local": "overwrite the master's row with the local row",
        "master": "keep the master's row",
    },
    "duplicate": {
        "title": "New row that already exists in the master",
        "what": "The laptop created a row whose natural key the master already has.",
        "local": "use the master's row and write the local values into it",
        "master": "use the master's row as it is and drop the local insert",
    },
    "orphan": {
        "title": "New row whose parent the master deleted",
        "what": "The laptop created or re-pointed a row to a parent row that was deleted in the master.",
        "local": "re-create the parent from the master's record of it when deleted (its tombstone), "
        "then insert the row",
        "master": "drop the local row",
    },
}


@dataclass
class Choice:
    choice: str  # local | master | value
    value: Any = None


@dataclass
class CurrentDecision:
    row: str | None = None  # the row-level choice, if the latest decision was for the whole row
    fields: dict[str, Choice] = field(default_factory=dict)


def current_decision(rows: Sequence[Mapping[str, Any]], field_names: list[str]) -> CurrentDecision:
    """Fold a conflict's decision history (oldest first) into what counts now (`records.decisions_in_force`)."""
    row = records.row_decision_in_force(rows)
    fields = {
        name: Choice(entry["choice"], entry.get("value") if entry["field"] is not None else None)
        for name, entry in records.decisions_in_force(rows, field_names).items()
    }
    return CurrentDecision(row["choice"] if row is not None else None, fields)


def is_decided(kind: str, field_names: list[str], current: CurrentDecision) -> bool:
    if kind in FIELD_KINDS and field_names:
        return all(name in current.fields for name in field_names)
    return current.row is not None


def validate_decision(kind: str, field_names: list[str], field_name: str | None, choice: str) -> None:
    if choice not in ("local", "master", "value"):
        raise DecisionError(f"unknown choice {choice!r}", "use --take local or --take master, or --value JSON")
    if field_name is not None:
        if kind not in FIELD_KINDS:
            raise DecisionError(f"a {kind} conflict is decided for the whole row, not per field", "leave out --field")
        if field_name not in field_names:
            raise DecisionError(
                f"field {field_name!r} is not part of this conflict", f"choose one of: {', '.join(field_names)}"
            )
    if choice == "value":
        if kind not in VALUE_KINDS:
            raise DecisionError(
                f"an edited value is possible only for update_update conflicts, not {kind}",
                "use --take local or --take master",
            )
        if field_name is None:
            raise DecisionError("an edited value needs the field it is for", "add --field NAME")


def _parse(ts: str | None) -> dt.datetime | None:
    if not ts:
        return None
    try:
        parsed = dt.datetime.fromisoformat(str(ts))
    except ValueError:
        return None
    # Change times are UTC; a modified_column without a zone is taken as UTC too.
    return parsed.replace(tzinfo=None) if parsed.tzinfo is None else parsed.astimezone(dt.UTC).replace(tzinfo=None)


def _master_time(d: Detected, name: str, modified_column: str | None, detected_at: dt.datetime) -> dt.datetime:
    candidates = [d.master_times.get(name), d.master_times.get("*")]
    if modified_column and d.master is not None:
        value = d.master.get(modified_column)
        candidates.append(value.isoformat() if isinstance(value, dt.date) else value)
    for candidate in candidates:
        parsed = _parse(candidate)
        if parsed is not None:
            return parsed
    # Unknown: as if it changed just now, so the master wins (the safe side).
    return detected_at


def _local_time(d: Detected, name: str) -> dt.datetime:
    return _parse(d.change.times.get(name) or d.change.times.get("*")) or dt.datetime.min


def auto_decide(
    d: Detected,
    policy: str,
    modified_column: str | None = None,
    detected_at: dt.datetime | None = None,
) -> list[tuple[str | None, str]] | None:
    """The decisions a policy takes for one conflict, as (field or None for the row, choice); None: manual."""
    assert d.kind is not None
    if policy == "manual":
        return None
    if d.kind == "orphan" and policy in ("local_wins", "newest_wins") and not d.detail.get("parent_row"):
        # The master kept no image of the parent (deleted before capture, or purged): it cannot be re-created.
        return [(None, "master")]
    if policy == "master_wins":
        return [(None, "master")]
    if policy == "local_wins":
        return [(None, "local")]
    now = detected_at or dt.datetime.now(dt.UTC).replace(tzinfo=None)
    names = [f.name for f in d.fields]
    if d.kind in FIELD_KINDS and names:
        return [
            (name, "local" if _local_time(d, name) > _master_time(d, name, modified_column, now) else "master")
            for name in names
        ]
    if d.kind == "orphan":
        master_at = _parse(d.detail.get("parent_deleted_at")) or now
        return [(None, "local" if _local_time(d, "*") > master_at else "master")]
    # A row delete counts as a change of every field: compare the latest change of each side.
    local_at = max((_local_time(d, n) for n in [*names, "*"]), default=dt.datetime.min)
    master_names = names if d.kind == "delete_update" else ["*"]
    master_at = max(_master_time(d, n, modified_column, now) for n in master_names) if master_names else now
    return [(None, "local" if local_at > master_at else "master")]


# ------------------------------------------------------------------------------------------------
# Rules of deciding, on conflicts in the public JSON shape (`queries.list_conflicts`): the review page
# and `sync-pipeline conflicts` both apply these, so they cannot drift apart.
# ------------------------------------------------------------------------------------------------


def per_field(conflict: Mapping[str, Any]) -> bool:
    """The conflict is decided field by field (else for the whole row)."""
    return conflict["kind"] in FIELD_KINDS and bool(conflict["fields"])


def may_type_value(conflict: Mapping[str, Any]) -> bool:
    return conflict["kind"] in VALUE_KINDS


def in_force(conflict: Mapping[str, Any], field_name: str | None = None) -> list[Mapping[str, Any]]:
    """The decision-history entries that count now for one field (or, with None, for the whole row)."""
    history = (conflict.get("decision") or {}).get("history") or []
    if not history:
        return []
    names = [f["name"] for f in conflict["fields"]]
    if not per_field(conflict):
        return [history[-1]]
    covering = records.decisions_in_force(history, names)
    entries: list[Mapping[str, Any]] = []
    for name in [field_name] if field_name is not None else names:
        entry = covering.get(name)
        if entry is not None and entry not in entries:
            entries.append(entry)
    return entries


def decider(entry: Mapping[str, Any]) -> str:
    """Who took a decision: the person, or the policy that decided by itself."""
    return entry.get("by") or f"policy {entry.get('rule')}"


def same_person(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.strip().casefold() == b.strip().casefold()


def decided_by_other(conflict: Mapping[str, Any], field_name: str | None, person: str) -> Mapping[str, Any] | None:
    """The newest decision in force for the target that someone else (a person or a policy) took."""
    others = [e for e in in_force(conflict, field_name) if not same_person(e.get("by"), person)]
    return max(others, key=lambda e: e["at"]) if others else None


class DecidedByOtherError(DecisionError):
    """The target of a decision carries someone else's decision, and the person did not say to replace it."""

    def __init__(self, problem: str, fix: str, by: str, at: str) -> None:
        self.by, self.at = by, at
        super().__init__(problem, fix)


def refuse_overwrite(conflict: Mapping[str, Any], field_name: str | None, person: str, how_to_change: str) -> None:
    """'already decided by X at T': a decision of someone else is never replaced without saying so."""
    other = decided_by_other(conflict, field_name, person)
    if other is not None:
        what = f"field {field_name} of conflict {conflict['id']}" if field_name else f"conflict {conflict['id']}"
        raise DecidedByOtherError(
            f"{what} was already decided by {decider(other)} at {other['at']} (take {other['take']})",
            how_to_change,
            decider(other),
            other["at"],
        )
