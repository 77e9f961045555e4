"""The master's own triggers: which exist on (or write into) the synchronised tables, and which columns
they maintain.

Triggers that keep `last_update`, a `tsvector`, an audit table or a denormalised counter are normal in
production schemas. They rewrite rows the load writes, so the load compares only the columns it wrote
and no trigger maintains (`load_verify`), and the optimistic check ignores what they change as a side
effect. Which columns a trigger sets is read from its source: assignments to NEW.<column> and the SET
lists of UPDATE statements in PL/pgSQL functions and SQLite trigger bodies, and the column argument of
the built-in functions that take one (`tsvector_update_trigger`, `moddatetime`, …). A trigger whose
effect cannot be read (dynamic SQL, a whole-row assignment, a function in C or another language, a
REPLACE) counts as maintaining every column of its table: its rows are then checked for presence only.
The engine's own change-capture triggers (`sync_clock…`) are left out. Each database lists its triggers
(`DialectImpl.master_triggers`, in `dialects/`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine.dialects import impl_for

ANY_COLUMN = "*"
OWN_TRIGGER_PREFIX = "sync_clock"  # the engine's change capture (dialects/)


@dataclass(frozen=True)
class MasterTrigger:
    name: str
    table: str  # the table it is declared on
    timing: str  # BEFORE | AFTER | INSTEAD OF
    events: tuple[str, ...]
    sets: tuple[tuple[str, tuple[str, ...]], ...]  # (table, columns it writes); ('*',): not readable

    def columns_set_in(self, table: str) -> set[str]:
        return {c for t, columns in self.sets if t == table for c in columns}

    def describe(self) -> str:
        writes = "; ".join(f"{t}: {', '.join(c)}" for t, c in self.sets) or "no column of a synchronised row"
        return f"{self.name} ({self.timing} {' OR '.join(self.events)} ON {self.table}) maintains {writes}"


@dataclass
class SourceEffects:
    own_columns: set[str]  # columns of its own table it sets (NEW.x := …; built-ins' column argument)
    updates: list[tuple[str, list[str]]]  # (table, columns) of UPDATE statements
    opaque_tables: set[str]  # tables whose every column it may change (unreadable effect)
    opaque_own: bool = False


# ------------------------------------------------------------------------------------------------
# Reading SQL source
# ------------------------------------------------------------------------------------------------

_IDENT = r'(?:"(?:[^"]|"")+"|`[^`]+`|\[[^\]]+\]|[A-Za-z_][\w$]*)'
_QUALIFIED = rf"{_IDENT}(?:\s*\.\s*{_IDENT})?"
_UPDATE = re.compile(
    rf"\bUPDATE\s+(?:OR\s+\w+\s+)?(?:ONLY\s+)?({_QUALIFIED})\s*(?:(?:AS\s+)?(?!SET\b){_IDENT}\s+)?SET\b",
    re.IGNORECASE,
)
_SET_END = re.compile(r"(?:WHERE|FROM|RETURNING|END|ELSE|ELSIF|WHEN)\b", re.IGNORECASE)
_SET_TUPLE = re.compile(r"\s*\(([^)]*)\)\s*=")
_SET_ONE = re.compile(rf"\s*({_IDENT})\s*=(?!=)")
_NEW_ASSIGN = re.compile(
    rf"(?:^|;|\bBEGIN\b|\bTHEN\b|\bELSE\b|\bLOOP\b)\s*NEW\s*\.\s*({_IDENT})\s*:?=(?!=)", re.IGNORECASE
)
_WHOLE_ROW = re.compile(r"(?:\bNEW\s*:?=(?!=)|\bINTO\s+NEW\b(?!\s*\.))", re.IGNORECASE)
_DYNAMIC = re.compile(r"\bEXECUTE\b", re.IGNORECASE)
_REPLACE = re.compile(rf"\b(?:REPLACE|INSERT\s+OR\s+REPLACE)\s+INTO\s+({_QUALIFIED})", re.IGNORECASE)
FIRST_ARG_COLUMN = {
    "tsvector_update_trigger",
    "tsvector_update_trigger_column",
    "moddatetime",
    "insert_username",
    "autoinc",
}
CHANGES_NOTHING = {"suppress_redundant_updates_trigger"}


def without_comments_and_strings(source: str) -> str:
    """The source with comments removed and string literals emptied: names in them are not code."""
    out, i, n = [], 0, len(source)
    while i < n:
        if source.startswith("--", i):
            i = source.find("\n", i)
            i = n if i < 0 else i
        elif source.startswith("/*", i):
            end = source.find("*/", i + 2)
            i = n if end < 0 else end + 2
        elif source[i] == "'":
            end = i + 1
            while end < n and not (source[end] == "'" and not source.startswith("''", end)):
                end += 2 if source.startswith("''", end) else 1
            out.append("''")
            i = end + 1
        else:
            out.append(source[i])
            i += 1
    return "".join(out)


def unquote(identifier: str, fold: bool) -> str:
    """A name as the catalog spells it: quoted names exactly, unquoted ones folded (PostgreSQL)."""
    identifier = identifier.strip()
    if identifier[:1] == '"' and identifier[-1:] == '"':
        return identifier[1:-1].replace('""', '"')
    if identifier[:1] in "`[" and len(identifier) > 1:
        return identifier[1:-1]
    return identifier.lower() if fold else identifier


def _last_part(qualified: str) -> str:
    parts = re.findall(_IDENT, qualified)
    return parts[-1] if parts else qualified


def _set_columns(text: str, start: int, fold: bool) -> list[str]:
    """The target columns of a SET list starting at `start`: `a = …, (b, c) = …` up to WHERE/FROM/;."""
    columns: list[str] = []
    depth, i, expecting = 0, start, True
    while i < len(text):
        if depth == 0:
            if text[i] == ";" or (
                _SET_END.match(text, i) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] in "_$"))
            ):
                break
            if expecting:
                expecting = False
                if found := _SET_TUPLE.match(text, i):
                    columns += [unquote(c, fold) for c in re.findall(_IDENT, found.group(1))]
                    i = found.end()
                    continue
                if found := _SET_ONE.match(text, i):
                    columns.append(unquote(found.group(1), fold))
                    i = found.end()
                    continue
        char = text[i]
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            expecting = True
        i += 1
    return columns


def read_source(source: str, fold: bool) -> SourceEffects:
    """What a PL/pgSQL function body or a SQLite trigger body writes."""
    text = without_comments_and_strings(source)
    effects = SourceEffects(set(), [], set())
    for found in _NEW_ASSIGN.finditer(text):
        effects.own_columns.add(unquote(found.group(1), fold))
    for found in _UPDATE.finditer(text):
        table = unquote(_last_part(found.group(1)), fold)
        effects.updates.append((table, _set_columns(text, found.end(), fold)))
    for found in _REPLACE.finditer(text):
        effects.opaque_tables.add(unquote(_last_part(found.group(1)), fold))
    if _WHOLE_ROW.search(text) or _DYNAMIC.search(text):
        effects.opaque_own = True
    return effects


def find_triggers(bind: Engine | Connection, tables: Mapping[str, sa.Table]) -> dict[str, list[MasterTrigger]]:
    """For each synchronised table, the master's triggers declared on it or writing into it."""
    if not tables:
        return {}
    impl = impl_for(bind)
    by_name = {impl.name_key(name): name for name in tables}

    def synced(table: str) -> str | None:
        return by_name.get(impl.name_key(table))

    out: dict[str, list[MasterTrigger]] = {}
    for name, declared_on, timing, events, effects in impl.master_triggers(bind):
        if name.startswith(OWN_TRIGGER_PREFIX):
            continue
        targets = [(declared_on, effects.own_columns), *effects.updates]
        targets += [(t, [ANY_COLUMN]) for t in effects.opaque_tables]
        if effects.opaque_own:
            targets.append((declared_on, [ANY_COLUMN]))
        writes: dict[str, set[str]] = {}
        for table, columns in targets:
            if (target := synced(table)) is not None:
                writes.setdefault(target, set()).update(_real_columns(tables[target], columns))
        sets = tuple(sorted((t, tuple(sorted(c))) for t, c in writes.items() if c))
        trigger = MasterTrigger(name, declared_on, timing, events, sets)
        for table in {synced(declared_on), *(t for t, _ in sets)} - {None}:
            out.setdefault(table, []).append(trigger)  # type: ignore[index]
    return out


def _real_columns(table: sa.Table, columns: Iterable[str]) -> set[str]:
    """The table's columns among names read from source (matched exactly, else ignoring case)."""
    known = {c.lower(): c for c in table.columns.keys()}  # noqa: SIM118 - a ColumnCollection, not a dict
    found = set()
    for column in columns:
        if column == ANY_COLUMN or column in table.columns:
            found.add(column)
        elif column.lower() in known:
            found.add(known[column.lower()])
    return found


def maintained_columns(table: sa.Table, triggers: Iterable[MasterTrigger]) -> frozenset[str]:
    """The columns of `table` its triggers (or other tables' triggers) set; every column if one is opaque."""
    columns: set[str] = set()
    for trigger in triggers:
        columns |= trigger.columns_set_in(table.name)
    if ANY_COLUMN in columns:
        return frozenset(c.name for c in table.columns if not c.primary_key)
    return frozenset(columns)
