"""Policies -> decisions (DESIGN §5). `manual` leaves a conflict pending for a person.

A decision is a choice per field (`local`, `master`, or an edited `value`) or for the whole row. The
history of decisions is kept; the current decision of a field is the latest one that covers it (a
row decision covers every field).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sync_pipeline.engine.detect import Detected
from sync_pipeline.engine.errors import DecisionError

FIELD_KINDS = frozenset({"update_update", "insert_insert", "duplicate"})  # compared field by field
VALUE_KINDS = frozenset({"update_update"})  # a typed value is allowed


@dataclass
class Choice:
    choice: str  # local | master | value
    value: Any = None


@dataclass
class CurrentDecision:
    row: str | None = None  # the row-level choice, if the latest decision was for the whole row
    fields: dict[str, Choice] = field(default_factory=dict)


def current_decision(rows: Iterable[Mapping[str, Any]], field_names: list[str]) -> CurrentDecision:
    """Fold a conflict's decision history (oldest first) into what counts now."""
    current = CurrentDecision()
    for row in rows:
        if row["field"] is None:
            current.row = row["choice"]
            current.fields = {name: Choice(row["choice"]) for name in field_names}
        else:
            current.row = None
            current.fields[row["field"]] = Choice(row["choice"], row.get("value"))
    return current


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
