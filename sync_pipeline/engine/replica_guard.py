"""A replica file is hostile input: bound what reading it may cost, and check its structure first.

A SQLite file can make any read expensive: a view in place of a table runs arbitrary SQL (a recursive
view never ends, `printf('%.*c', 400000000, 'x')` allocates gigabytes), a trigger runs SQL on every write
the sync makes to the file, a generated column computes on every read. So before anything but the schema
is read, every object in the file must be one the product made:

- the manifest and the change log are plain tables whose CREATE text is exactly the product's;
- each module table is a plain table (no view, no virtual table) with the master's columns, none generated;
- the only triggers are the change-log triggers checkout installs and the freeze triggers a sync installs,
  compared character for character (a freeze trigger's message is any SQL string literal);
- nothing else: no other table, view, index (but SQLite's own for keys), trigger.

And every connection to a replica is bounded: no string or blob over `MAX_VALUE_BYTES` (SQLite's length
limit), no statement running past its time budget (a progress handler), at most `MAX_LOG_ENTRIES` log
entries and `MAX_SCHEMA_OBJECTS` schema objects.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from sync_pipeline.engine.dialects.sqlite_replica import (
    FROZEN_OPS,
    LOG_TABLE,
    LOG_TABLE_SQL,
    frozen_trigger_sql,
    replica_log_triggers,
)
from sync_pipeline.engine.errors import ReplicaError
from sync_pipeline.engine.schema import TableInfo

MANIFEST_TABLE = "_sync_manifest"
MANIFEST_TABLE_SQL = f"CREATE TABLE {MANIFEST_TABLE} (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
SEQUENCE_TABLE_SQL = "CREATE TABLE sqlite_sequence(name,seq)"  # SQLite's own, for AUTOINCREMENT

MAX_VALUE_BYTES = 64 * 1024 * 1024  # one value (or row) read from a replica
MAX_SCHEMA_OBJECTS = 10_000
MAX_LOG_ENTRIES = 5_000_000
MAX_MANIFEST_ENTRIES = 64
VERIFY_SECONDS = 60.0  # checking the structure and reading the manifest
READ_SECONDS = 1800.0  # any one statement afterwards (reading the change log of millions of entries)
_PROGRESS_STEPS = 10_000  # SQLite VM instructions between two looks at the clock

DAMAGED_FIX = "the replica was edited outside the product or is damaged; check out a new replica"


def guard(conn: sqlite3.Connection, seconds: float = VERIFY_SECONDS) -> None:
    """Bound what any statement on `conn` may cost from now on: value size, and `seconds` per call of
    `arm` (a statement past its budget is interrupted)."""
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    arm(conn, seconds)


def arm(conn: sqlite3.Connection, seconds: float) -> None:
    """Start a new time budget of `seconds` for what follows on `conn`."""
    deadline = time.monotonic() + seconds
    conn.set_progress_handler(lambda: int(time.monotonic() > deadline), _PROGRESS_STEPS)


def refused(file: Path | str | None, exc: sqlite3.Error) -> ReplicaError:
    """A SQLite error while reading a replica, as bad input with its cause and a fix."""
    text = str(exc)
    file = file or "(the one being synchronised)"
    if "interrupted" in text:
        return ReplicaError(
            f"reading replica {file} took longer than its time budget; it holds more (or other) than a replica",
            DAMAGED_FIX,
        )
    if "too big" in text:
        return ReplicaError(
            f"replica {file} holds a value larger than {MAX_VALUE_BYTES:,} bytes",
            "a replica's values are the master's; shorten the value locally or check out a new replica",
        )
    return ReplicaError(f"replica {file} cannot be read ({text})", DAMAGED_FIX)


def schema_objects(conn: sqlite3.Connection, file: Path | str) -> list[tuple[str, str, str, str | None]]:
    """(type, name, table, sql) of every object in the file: reading the schema runs none of them."""
    try:
        rows = conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master LIMIT ?", (MAX_SCHEMA_OBJECTS + 1,)
        ).fetchall()
    except sqlite3.Error as exc:
        raise refused(file, exc) from None
    if len(rows) > MAX_SCHEMA_OBJECTS:
        raise ReplicaError(f"replica {file} holds more than {MAX_SCHEMA_OBJECTS} schema objects", DAMAGED_FIX)
    return rows


def check_manifest_table(conn: sqlite3.Connection, file: Path | str) -> None:
    """Before the manifest is read: a plain table as checkout made it, with nothing that runs on it."""
    objects = schema_objects(conn, file)
    found = [o for o in objects if o[1] == MANIFEST_TABLE]
    if not found:
        raise ReplicaError(
            f"{file} is a SQLite database but not a replica (it has no {MANIFEST_TABLE} table)",
            "pass the file that `sync-pipeline checkout` created",
        )
    problems = _problems_of_table(found[0], MANIFEST_TABLE_SQL)
    problems += [_describe(o) for o in objects if o[0] in ("trigger", "index") and o[2] == MANIFEST_TABLE and o[3]]
    if problems:
        raise ReplicaError(f"replica {file} is not as checkout made it: {'; '.join(problems)}", DAMAGED_FIX)


def check_structure(conn: sqlite3.Connection, file: Path | str, infos: dict[str, TableInfo]) -> None:
    """Every object of the file is one the product made for these module tables (see the module doc)."""
    expected_tables = {MANIFEST_TABLE: MANIFEST_TABLE_SQL, LOG_TABLE: LOG_TABLE_SQL, "sqlite_sequence": None}
    log_triggers: dict[str, str] = {}
    frozen: dict[str, tuple[str, str]] = {}
    for info in infos.values():
        log_triggers.update(replica_log_triggers(None, info))
        for op in FROZEN_OPS:
            name, before, after = frozen_trigger_sql(info.name, op)
            frozen[name] = (before, after)
    problems: list[str] = []
    seen: set[str] = set()
    for obj in schema_objects(conn, file):
        kind, name, _table, sql = obj
        seen.add(name)
        if kind == "table" and name in infos:
            problems += _problems_of_module_table(conn, file, obj, infos[name])
        elif kind == "table" and name in expected_tables:
            expected = expected_tables[name] or SEQUENCE_TABLE_SQL
            problems += _problems_of_table(obj, expected)
        elif kind == "trigger" and name in log_triggers:
            if sql != log_triggers[name]:
                problems.append(f"trigger '{name}' was changed")
        elif kind == "trigger" and name in frozen:
            before, after = frozen[name]
            if not (
                sql and sql.startswith(before) and sql.endswith(after) and _literal(sql[len(before) : -len(after)])
            ):
                problems.append(f"trigger '{name}' was changed")
        elif kind == "index" and sql is None and name.startswith("sqlite_autoindex_"):
            continue  # SQLite's own index of a key
        elif kind == "table" and name in ("sqlite_stat1", "sqlite_stat4"):
            continue  # statistics of ANALYZE (an application's `PRAGMA optimize`): read by the planner only
        else:
            problems.append(_describe(obj))
    missing = [n for n in [*infos, LOG_TABLE, *log_triggers] if n not in seen]
    if missing:
        problems.append("missing: " + ", ".join(f"'{n}'" for n in missing))
    if problems:
        shown = problems[:10] + ([f"and {len(problems) - 10} more"] if len(problems) > 10 else [])
        raise ReplicaError(
            f"replica {file} is not as checkout made it: {'; '.join(shown)}",
            "a replica may only be changed through its tables' rows; check out a new replica "
            "(or remove what was added with sqlite3 and sync again)",
        )


def check_log_size(conn: sqlite3.Connection, file: Path | str) -> None:
    try:
        entries = conn.execute("SELECT count(*) FROM _sync_log").fetchone()[0]
    except sqlite3.Error as exc:
        raise refused(file, exc) from None
    if entries > MAX_LOG_ENTRIES:
        raise ReplicaError(
            f"the change log of replica {file} holds {entries} entries, more than {MAX_LOG_ENTRIES} a sync reads",
            "synchronise more often; for a change of every row, check out a new replica and redo it there",
        )


def _problems_of_table(obj: tuple[str, str, str, str | None], expected_sql: str) -> list[str]:
    kind, name, _table, sql = obj
    if kind != "table":
        return [f"'{name}' is a {kind}, not a table"]
    if sql != expected_sql:
        return [f"table '{name}' was redefined"]
    return []


def _problems_of_module_table(
    conn: sqlite3.Connection, file: Path | str, obj: tuple[str, str, str, str | None], info: TableInfo
) -> list[str]:
    _kind, name, _table, sql = obj
    if not sql or not sql.startswith("CREATE TABLE "):
        return [f"'{name}' is not a plain table ({_first_words(sql)})"]
    try:
        columns = conn.execute("SELECT name, hidden FROM pragma_table_xinfo(?)", (name,)).fetchall()
    except sqlite3.Error as exc:
        raise refused(file, exc) from None
    problems = [f"column '{name}.{shown(c)}' is computed" for c, hidden in columns if hidden]
    names = [c for c, _hidden in columns]
    if sorted(names) != sorted(info.columns):
        problems.append(
            f"table '{name}' has columns {shown(', '.join(names), 200)}, not the master's {', '.join(info.columns)}"
        )
    return problems


def _describe(obj: tuple[str, str, str, str | None]) -> str:
    kind, name, table, sql = obj
    where = f" on '{shown(table)}'" if kind in ("trigger", "index") else ""
    return f"unexpected {shown(kind)} '{shown(name)}'{where} ({_first_words(sql)})"


def _first_words(sql: str | None, limit: int = 60) -> str:
    return shown(" ".join((sql or "").split()), limit)


def shown(text: str, limit: int = 60) -> str:
    """Text from the file as a message may show it: printable characters only (no terminal escapes), short."""
    text = "".join(ch if ch.isprintable() else "?" for ch in text[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "…"


def _literal(text: str) -> bool:
    """Whether `text` is exactly one SQL string literal ('…' with quotes doubled inside)."""
    return len(text) >= 2 and text[0] == text[-1] == "'" and "'" not in text[1:-1].replace("''", "")
