"""How values, keys, times and deciders read in the human formats: the protocol (Markdown, HTML, PDF),
`conflicts list|show`, `history` and the review page.

JSON keeps the raw values; these helpers exist so that every human format says the same thing the same way.

One notation for the three kinds of "nothing" (docs/protocol.md, "Reading values"):

- `NULL`      the row exists and the field holds SQL NULL;
- `(no row)`  there is no row on that side (not yet inserted, deleted, or gone after the sync);
- `—`         nothing to show: no decision yet, no time recorded, not applicable.

Text that reads like one of these marks (or is empty, or has leading/trailing spaces) is shown quoted as
JSON, so that the text `"NULL"` is never mistaken for a NULL.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

NULL = "NULL"
NO_ROW = "(no row)"
NO_VALUE = "—"
EMPTY = NO_VALUE  # the older name, kept for the renderers
MARKS = (NULL, NO_ROW, NO_VALUE)
SIDES = ("base", "local", "master", "kept")
ISO_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?$")

STATE_LABELS = {
    "done": "Synchronised",
    "empty": "Nothing synchronised",
    "waiting": "Waiting for decisions",
    "in_progress": "In progress",
    "failed": "Failed",
}

TAKE_LABELS = {"local": "local", "master": "master", "value": "edited value", "mixed": "field by field"}


def value(item: Any, row_exists: bool = True) -> str:
    """A stored value as a person reads it: `NULL` for SQL NULL, `(no row)` when the side has no row."""
    if not row_exists:
        return NO_ROW
    if item is None:
        return NULL
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, (dict, list)):
        return json.dumps(item, ensure_ascii=False, sort_keys=True)
    text = str(item)
    if ISO_TIMESTAMP.match(text):
        # Timestamps are stored as ISO strings; a space reads better and lets a narrow cell wrap there.
        return text.replace("T", " ", 1)
    if text in MARKS or text.strip() != text or text == "" or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def side(no_row: Iterable[str], name: str, item: Any) -> str:
    """One side (base, local, master, kept) of a conflict's field; `no_row` lists the sides without a row."""
    return value(item, name not in no_row)


def optional(item: Any) -> str:
    """A value that may simply be missing (not a stored field): `—` when there is none."""
    return NO_VALUE if item is None else value(item)


def short(text: str, width: int) -> str:
    """`text` cut to `width` characters with an ellipsis (for fixed-width terminal columns)."""
    return text if len(text) <= width else text[: width - 1] + "…"


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


def key_text(key: Mapping[str, Any]) -> str:
    """A row key as `id=5, code="A"` (strings quoted as JSON)."""
    return ", ".join(f"{k}={json.dumps(v, ensure_ascii=False) if isinstance(v, str) else v}" for k, v in key.items())


def identity_text(conflict: Mapping[str, Any]) -> str:
    """The row's identifying fields in one line (`name=Ada Lovelace, email=ada@example.com`)."""
    return key(conflict.get("identity") or {}) if conflict.get("identity") else ""
