"""How values, keys, times and deciders read in the human formats (Markdown, HTML, PDF).

JSON keeps the raw values; these helpers exist so that Markdown and HTML say the same thing the same way.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Mapping
from typing import Any

EMPTY = "—"
ISO_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")

STATE_LABELS = {
    "done": "Synchronised",
    "empty": "Nothing synchronised",
    "waiting": "Waiting for decisions",
    "in_progress": "In progress",
    "failed": "Failed",
}

TAKE_LABELS = {"local": "local", "master": "master", "value": "edited value", "mixed": "field by field"}


def value(item: Any) -> str:
    """A stored value as a person reads it; None (no value, or no row) is a dash."""
    if item is None:
        return EMPTY
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, (dict, list)):
        return json.dumps(item, ensure_ascii=False, sort_keys=True)
    text = str(item)
    if ISO_TIMESTAMP.match(text):
        # Timestamps are stored as ISO strings; a space reads better and lets a narrow cell wrap there.
        return text.replace("T", " ", 1)
    return text if text != "" else "(empty text)"


def key(item: Mapping[str, Any] | None) -> str:
    if not item:
        return EMPTY
    return ", ".join(f"{name}={value(v)}" for name, v in item.items())


def time(iso: str | None, with_seconds: bool = True) -> str:
    """Stored times are UTC ISO strings; people read them without the 'T' and with the zone said."""
    if not iso:
        return EMPTY
    try:
        parsed = dt.datetime.fromisoformat(iso)
    except ValueError:
        return iso
    return parsed.strftime("%Y-%m-%d %H:%M:%S" if with_seconds else "%Y-%m-%d %H:%M") + " UTC"


def date(iso: str | None) -> str:
    if not iso:
        return EMPTY
    try:
        return dt.datetime.fromisoformat(iso).strftime("%Y-%m-%d")
    except ValueError:
        return iso


def duration(seconds: float | None) -> str:
    if seconds is None:
        return EMPTY
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def decider(rule: str | None, by: str | None) -> str:
    """Who or what decided: a person's name, or the policy that did."""
    if rule is None:
        return "pending"
    if rule == "person":
        return by or "a person"
    return f"policy {rule}"


def counts(mapping: Mapping[str, int]) -> str:
    return ", ".join(f"{name}: {count}" for name, count in mapping.items()) or EMPTY


def take(item: str | None) -> str:
    return EMPTY if item is None else TAKE_LABELS.get(item, item)
