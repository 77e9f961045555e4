"""Model-based property test: the real pipeline against a plain reference model of docs/sync_rules.md §3–§5.

Hypothesis draws a small schema (1-3 tables; generated, text or composite keys; foreign keys, some
nullable; natural keys), base rows, a sequence of local edits on the replica and of master edits
(updates, inserts, deletes of whole subtrees; small value domains, so that changes converge, change
back, collide on keys and natural keys, and orphan rows), a policy per module (and per table), which
side edited last (for `newest_wins`), and a person's decisions for manual conflicts.

The reference model works on plain dicts: the net local change of a row is base vs replica, a
master change is base vs master, and the tables of docs/sync_rules.md §3–§4 are applied as written. The real
pipeline (checkout, SQLite change log, extraction, detection on the master, policies, decisions,
one-transaction load) must report the same conflicts and leave the master exactly as the model says.

Runs: 300 examples on SQLite and 100 each on PostgreSQL and MariaDB by default (one PostgreSQL schema,
one MariaDB database, emptied per example). A larger run: `SYNC_MODEL_EXAMPLES=5000 .venv/bin/pytest
sync_pipeline_tests/test_model_based.py` (PostgreSQL and MariaDB get a third of it). Every run draws a
new seed (CI too) and prints it in pytest's header
("model-based tests: hypothesis seed N"); `SYNC_MODEL_SEED=N` (or `--hypothesis-seed=N`) runs those
examples again.

Known engine bugs are recognised by the model (`Expected.known_bug`; each open one also has a strict
xfail test at the end): for those examples the engine must at least fail cleanly (SyncError, or waiting
again, the master's business tables untouched) or, once fixed, succeed with a consistent master. When a
bug is fixed, its xfail test passes (XPASS fails the suite): remove the marker and the model's `known_bug`
line for it, so that the property checks the fixed behaviour exactly.
"""

from __future__ import annotations

import itertools
import os
import time
import uuid
from collections.abc import Callable, Iterator
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, note, seed, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine import store
from sync_pipeline.engine.checkout import checkout
from sync_pipeline.engine.errors import SyncError
from sync_pipeline.engine.load import advance_sequence
from sync_pipeline.engine.master import connect_master, init_master
from sync_pipeline.engine.queries import list_conflicts
from sync_pipeline.engine.schema import reflect_tables
from sync_pipeline.engine.session import decide, run_sync
from sync_pipeline.engine.settings import parse_settings
from sync_pipeline.engine.signing_key import drop_key_store
from sync_pipeline_tests.conftest import MARIADB_URL, PG_URL, require_mariadb, require_postgres
from sync_pipeline_tests.helpers import TABLES, make_master, make_replica, replica_engine
from sync_pipeline_tests.masters import backend_on_all_masters  # noqa: F401 - `backend` over all three masters

EXAMPLES = int(os.environ.get("SYNC_MODEL_EXAMPLES", "300"))
PG_EXAMPLES = max(100, EXAMPLES // 3)

POLICIES = ("master_wins", "local_wins", "newest_wins", "manual")
FIELD_KINDS = {"update_update", "insert_insert", "duplicate"}
A_VALUES = (0, 1, 2, None)
B_VALUES = ("x", "y", "z", None)
NK_VALUES = ("n0", "n1", "n2", "n3", "n4")
KEY_DOMAIN: dict[str, list[tuple[Any, ...]]] = {
    "serial": [(i,) for i in range(1, 7)],
    "text": [(f"k{i}",) for i in range(6)],
    "composite": [(f"k{i}", n) for i in range(3) for n in range(3)],
}
PK = {"serial": ("id",), "text": ("code",), "composite": ("code", "num")}

Key = tuple[Any, ...]
Row = dict[str, Any]
State = dict[str, dict[Key, Row]]


# ------------------------------------------------------------------------------------------------
# Schemas
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableSpec:
    name: str
    key: str  # serial | text | composite
    parent: int | None
    fk_nullable: bool
    natural: bool
    module: str
    policy: str | None  # a table's own policy, overriding its module's

    @property
    def pk(self) -> tuple[str, ...]:
        return PK[self.key]


@dataclass(frozen=True)
class Spec:
    tables: tuple[TableSpec, ...]
    module_policies: tuple[tuple[str, str], ...]
    local_last: bool  # the replica's edits are newer than the master's (newest_wins)

    def table(self, name: str) -> TableSpec:
        return next(t for t in self.tables if t.name == name)

    def parent_of(self, t: TableSpec) -> TableSpec | None:
        return None if t.parent is None else self.tables[t.parent]

    def fk_columns(self, t: TableSpec) -> tuple[str, ...]:
        parent = self.parent_of(t)
        return () if parent is None else tuple(f"p_{c}" for c in parent.pk)

    def columns(self, t: TableSpec) -> tuple[str, ...]:
        return (*t.pk, "a", "b", *(("nk",) if t.natural else ()), *self.fk_columns(t))

    def value_columns(self, t: TableSpec) -> tuple[str, ...]:
        return tuple(c for c in self.columns(t) if c not in t.pk)

    def policy(self, t: TableSpec) -> str:
        return t.policy or dict(self.module_policies)[t.module]

    def children(self, t: TableSpec) -> list[TableSpec]:
        index = self.tables.index(t)
        return [c for c in self.tables if c.parent == index]

    def metadata(self) -> sa.MetaData:
        metadata = sa.MetaData()
        for t in self.tables:
            columns: list[Any] = []
            if t.key == "serial":
                columns.append(sa.Column("id", sa.Integer, primary_key=True))
            elif t.key == "text":
                columns.append(sa.Column("code", sa.String(8), primary_key=True))
            else:
                columns.append(sa.Column("code", sa.String(8), primary_key=True))
                columns.append(sa.Column("num", sa.Integer, primary_key=True, autoincrement=False))
            columns += [sa.Column("a", sa.Integer), sa.Column("b", sa.String(8))]
            if t.natural:
                columns.append(sa.Column("nk", sa.String(12), unique=True))
            parent = self.parent_of(t)
            if parent is not None:
                for c in parent.pk:
                    kind = sa.Integer if c in ("id", "num") else sa.String(8)
                    columns.append(sa.Column(f"p_{c}", kind, nullable=t.fk_nullable))
                columns.append(
                    sa.ForeignKeyConstraint(list(self.fk_columns(t)), [f"{parent.name}.{c}" for c in parent.pk])
                )
            sa.Table(t.name, metadata, *columns)
        return metadata

    def settings_yaml(self) -> str:
        lines = ["modules:"]
        for module, policy in self.module_policies:
            members = [t for t in self.tables if t.module == module]
            if not members:
                continue
            lines += [f"  {module}:", f"    policy: {policy}", "    tables:"]
            for t in members:
                extra = []
                if t.policy:
                    extra.append(f"policy: {t.policy}")
                if t.natural:
                    extra.append("natural_key: [nk]")
                lines.append(f"      {t.name}: {{{', '.join(extra)}}}")
        return "\n".join(lines) + "\n"


@st.composite
def specs(draw: Any) -> Spec:
    count = draw(st.integers(1, 3))
    tables = []
    for i in range(count):
        parent = draw(st.one_of(st.none(), st.integers(0, i - 1))) if i > 0 and draw(st.booleans()) else None
        if i > 0 and parent is None and draw(st.integers(0, 3)) > 0:
            parent = draw(st.integers(0, i - 1))
        tables.append(
            TableSpec(
                name=f"t{i}",
                key=draw(st.sampled_from(["serial", "text", "composite"])),
                parent=parent,
                fk_nullable=draw(st.booleans()),
                natural=draw(st.booleans()),
                module=draw(st.sampled_from(["m0", "m1"])),
                policy=draw(st.one_of(st.none(), st.none(), st.none(), st.sampled_from(POLICIES))),
            )
        )
    policies = (("m0", draw(st.sampled_from(POLICIES))), ("m1", draw(st.sampled_from(POLICIES))))
    return Spec(tuple(tables), policies, draw(st.booleans()))


# ------------------------------------------------------------------------------------------------
# Edits: drawn against the current state of one side, applied to it and to its database
# ------------------------------------------------------------------------------------------------


@dataclass
class Side:
    """One side's rows as the edits leave them, and what its change capture records."""

    spec: Spec
    state: State
    is_replica: bool
    deleted_serial: set[tuple[str, Key]] = field(default_factory=set)
    clock: set[tuple[str, Key, str]] = field(default_factory=set)  # master: (table, key, column or '*')
    tombstones: dict[tuple[str, Key], Row] = field(default_factory=dict)  # master: the last image deleted
    log: list[str] = field(default_factory=list)

    def parent_keys(self, t: TableSpec) -> list[Key]:
        parent = self.spec.parent_of(t)
        return [] if parent is None else sorted(self.state[parent.name])

    def used_nk(self, t: TableSpec) -> set[Any]:
        return {r["nk"] for r in self.state[t.name].values()}


def key_of(t: TableSpec, row: Row) -> Key:
    return tuple(row[c] for c in t.pk)


def draw_row(data: Any, side: Side, t: TableSpec, key: Key) -> Row | None:
    row: Row = dict(zip(t.pk, key, strict=True))
    row["a"] = data.draw(st.sampled_from(A_VALUES))
    row["b"] = data.draw(st.sampled_from(B_VALUES))
    if t.natural:
        free = [v for v in NK_VALUES if v not in side.used_nk(t)]
        row["nk"] = data.draw(st.sampled_from([*free, None]))
    fk = side.spec.fk_columns(t)
    if fk:
        choices: list[Key | None] = list(side.parent_keys(t))
        if t.fk_nullable:
            choices.append(None)
        if not choices:
            return None
        parent_key = data.draw(st.sampled_from(choices))
        for column, value in zip(fk, parent_key or (None,) * len(fk), strict=True):
            row[column] = value
    return row


def subtree(side: Side, t: TableSpec, key: Key) -> list[tuple[TableSpec, Key]]:
    """The row and every row that references it (transitively), children first."""
    out: list[tuple[TableSpec, Key]] = []
    for child in side.spec.children(t):
        fk = side.spec.fk_columns(child)
        for child_key, row in sorted(side.state[child.name].items()):
            if tuple(row[c] for c in fk) == key:
                out += subtree(side, child, child_key)
    out.append((t, key))
    return out


def edit(data: Any, side: Side, conn: sa.Connection, tables: dict[str, sa.Table]) -> None:
    """One random edit of one side: drawn, applied to the model state and to the database."""
    spec = side.spec
    kind = data.draw(st.sampled_from(["update", "update", "insert", "insert", "delete"]))
    # Inserts lean to child tables and deletes to parent tables: orphans and referenced deletes.
    leaning = [t for t in spec.tables if (t.parent is not None if kind == "insert" else bool(spec.children(t)))]
    choices = list(spec.tables) + (leaning * 2 if kind != "update" else [])
    t = data.draw(st.sampled_from(choices))
    rows = side.state[t.name]
    table = tables[t.name]

    def where(key: Key) -> Any:
        return sa.and_(*[table.c[c] == v for c, v in zip(t.pk, key, strict=True)])

    if kind == "update" and rows:
        key = data.draw(st.sampled_from(sorted(rows)))
        columns = ["a", "b"] + (["fk"] if spec.fk_columns(t) else [])
        column = data.draw(st.sampled_from(columns))
        if column == "fk":
            choices: list[Key | None] = list(side.parent_keys(t)) + ([None] if t.fk_nullable else [])
            parent_key = data.draw(st.sampled_from(choices))
            values = dict(zip(spec.fk_columns(t), parent_key or (None,) * len(spec.fk_columns(t)), strict=True))
        else:
            values = {column: data.draw(st.sampled_from(A_VALUES if column == "a" else B_VALUES))}
        old = rows[key]
        for c, v in values.items():
            if old[c] != v:
                side.clock.add((t.name, key, c))
        rows[key] = old | values
        conn.execute(sa.update(table).where(where(key)).values(values))
        side.log.append(f"{'local' if side.is_replica else 'master'} update {t.name} {key} {values}")
    elif kind == "insert":
        free = [
            k
            for k in KEY_DOMAIN[t.key]
            if k not in rows and not (side.is_replica and (t.name, k) in side.deleted_serial)
        ]
        if not free:
            return
        key = data.draw(st.sampled_from(free))
        row = draw_row(data, side, t, key)
        if row is None:
            return
        rows[key] = row
        side.clock.add((t.name, key, "*"))
        conn.execute(sa.insert(table).values(row))
        side.log.append(f"{'local' if side.is_replica else 'master'} insert {t.name} {row}")
    elif kind == "delete" and rows:
        key = data.draw(st.sampled_from(sorted(rows)))
        for victim, victim_key in subtree(side, t, key):
            side.tombstones[(victim.name, victim_key)] = side.state[victim.name].pop(victim_key)
            side.clock.add((victim.name, victim_key, "*"))
            if victim.key == "serial":
                # SQLite would hand the key out again: a known engine bug (see the xfail test in
                # test_concurrency.py), so the replica never reuses a deleted generated key here.
                side.deleted_serial.add((victim.name, victim_key))
            v_table = tables[victim.name]
            conn.execute(
                sa.delete(v_table).where(*[v_table.c[c] == v for c, v in zip(victim.pk, victim_key, strict=True)])
            )
        side.log.append(f"{'local' if side.is_replica else 'master'} delete {t.name} {key} (and its subtree)")


# ------------------------------------------------------------------------------------------------
# The reference model
# ------------------------------------------------------------------------------------------------


@dataclass
class Change:
    table: TableSpec
    key: Key
    op: str  # insert | update | delete
    base: Row | None
    local: Row | None
    changed: list[str]
    action: str = ""  # apply | skip | remap | conflict
    kind: str | None = None
    fields: list[str] = field(default_factory=list)
    apply_fields: list[str] = field(default_factory=list)
    target: Key | None = None
    parent_key: Key | None = None  # orphan
    parent_row: Row | None = None


@dataclass
class Expected:
    conflicts: set[tuple[str, Key, str, frozenset[str]]]
    changes: list[Change]
    final: State | None = None
    known_bug: str | None = None
    contested: set[tuple[str, Key]] = field(default_factory=set)


def detect(
    spec: Spec,
    base: State,
    local: State,
    master: State,
    clock: set[tuple[str, Key, str]] | None = None,
    tombstones: dict[tuple[str, Key], Row] | None = None,
) -> list[Change]:
    """docs/sync_rules.md §3, row by row, on plain dicts. A field the master's clock shows changed since the checkout
    is a master change even where its value is back to the base; an orphan's parent comes back from the
    master's tombstone of it, never from the replica's row."""
    clock = clock or set()
    tombstones = tombstones or {}

    def clocked(t: TableSpec, key: Key, f: str) -> bool:
        return (t.name, key, f) in clock or (t.name, key, "*") in clock

    changes: list[Change] = []
    for t in spec.tables:
        b, lo = base[t.name], local[t.name]
        for key in sorted(set(b) | set(lo), key=repr):
            if key not in b:
                changes.append(Change(t, key, "insert", None, lo[key], list(spec.columns(t))))
            elif key not in lo:
                changes.append(Change(t, key, "delete", b[key], None, []))
            else:
                changed = [c for c in spec.columns(t) if b[key][c] != lo[key][c]]
                if changed:
                    changes.append(Change(t, key, "update", b[key], lo[key], changed))
    inserts = {(c.table.name, c.key) for c in changes if c.op == "insert"}
    deletes = {(c.table.name, c.key) for c in changes if c.op == "delete"}
    for c in changes:
        t, m = c.table, master[c.table.name].get(c.key)
        if c.op == "update":
            assert c.base is not None and c.local is not None
            if m is None:
                c.action, c.kind, c.fields = "conflict", "update_delete", list(c.changed)
                continue
            conflict = [f for f in c.changed if (m[f] != c.base[f] or clocked(t, c.key, f)) and m[f] != c.local[f]]
            c.apply_fields = [f for f in c.changed if f not in conflict and m[f] != c.local[f]]
            if conflict:
                c.action, c.kind, c.fields = "conflict", "update_update", conflict
            else:
                c.action = "apply" if c.apply_fields else "skip"
        elif c.op == "delete":
            assert c.base is not None
            if m is None:
                c.action = "skip"
                continue
            changed = [f for f in spec.columns(t) if m[f] != c.base[f] or clocked(t, c.key, f)]
            c.action, c.kind, c.fields = ("conflict", "delete_update", changed) if changed else ("apply", None, [])

    def find_orphan(c: Change) -> None:
        # An insert, or an update of the reference, that points at a parent the master deleted. Conflicts
        # whose decision may write the local reference (a re-insert; a field decided 'local') only note it.
        t = c.table
        fk = spec.fk_columns(t)
        parent = spec.parent_of(t)
        reinsert = c.kind == "update_delete"  # comes back if the local side wins: needs its parent
        decided = c.kind in FIELD_KINDS and bool(set(fk) & (set(c.fields) | set(c.apply_fields)))
        if (
            parent is not None
            and (c.action in ("apply", "remap") or reinsert or decided)
            and (c.op == "insert" or reinsert or decided or (c.op == "update" and set(fk) & set(c.apply_fields)))
        ):
            assert c.local is not None
            parent_key = tuple(c.local[f] for f in fk)
            if (
                None not in parent_key
                and (parent.name, parent_key) not in inserts
                and parent_key not in master[parent.name]
            ):
                c.parent_key, c.parent_row = parent_key, tombstones.get((parent.name, parent_key))
                if not reinsert and not decided:
                    c.action, c.kind, c.fields = "conflict", "orphan", list(fk)
                    if c.op == "insert":
                        c.apply_fields = []

    for c in changes:  # updates first: one that becomes an orphan frees no natural key
        if c.op != "insert":
            find_orphan(c)
    # A local delete of a row other master rows still reference: delete_update.
    # Rows the replica deletes or re-points elsewhere do not count.
    for c in changes:
        let_go = deletes | moved_away(spec, changes, c.table, c.key)
        if c.op == "delete" and c.action in ("apply", "conflict") and referenced(spec, master, c.table, c.key, let_go):
            c.action, c.kind = "conflict", "delete_update"
    # A row whose local delete applies, or that the replica gives another natural key (a row deleted and
    # made anew under its key nets to that), frees its natural key: a new local row with it is a new record.
    released = {(c.table.name, c.key) for c in changes if c.op == "delete" and c.action == "apply"} | {
        (c.table.name, c.key)
        for c in changes
        if c.op == "update" and (c.action == "apply" or c.kind == "update_update") and "nk" in c.apply_fields
    }
    for c in changes:
        t, m = c.table, master[c.table.name].get(c.key)
        if c.op != "insert":
            continue
        assert c.local is not None
        hit = None
        if t.natural and c.local["nk"] is not None:
            hit = next(
                (r for k, r in master[t.name].items() if r["nk"] == c.local["nk"] and (t.name, k) not in released),
                None,
            )
        values = spec.value_columns(t)
        if hit is not None:  # the same record by its natural key, under another key or this one
            differing = [f for f in values if hit[f] != c.local[f]]
            if not differing and key_of(t, hit) == c.key:
                c.action = "skip"
            else:
                c.action, c.kind, c.target, c.fields = "conflict", "duplicate", key_of(t, hit), differing
        elif m is None:
            c.action = "apply"
        elif t.key == "serial":
            c.action = "remap"
        else:
            differing = [f for f in values if m[f] != c.local[f]]
            c.action, c.kind, c.fields = ("conflict", "insert_insert", differing) if differing else ("skip", None, [])
        find_orphan(c)
    return changes


def moved_away(spec: Spec, changes: list[Change], t: TableSpec, key: Key) -> set[tuple[str, Key]]:
    """Rows the replica changed to stop pointing at `key` (as the load will write them)."""
    out = set()
    for c in changes:
        parent = spec.parent_of(c.table)
        if c.op == "update" and parent is t and c.local is not None:
            fk = spec.fk_columns(c.table)
            if tuple(c.local[f] for f in fk) != key and set(fk) & set(c.changed):
                out.add((c.table.name, c.key))
    return out


def referenced(spec: Spec, state: State, t: TableSpec, key: Key, excluded: set[tuple[str, Key]]) -> bool:
    for child in spec.children(t):
        fk = spec.fk_columns(child)
        for child_key, row in state[child.name].items():
            if (child.name, child_key) not in excluded and tuple(row[f] for f in fk) == key:
                return True
    return False


def auto_decision(spec: Spec, c: Change, clock: set[tuple[str, Key, str]]) -> dict[str, Any] | None:
    """What a policy decides (None: a person decides). `newest_wins` compares the phases' order; a
    master time the field clock does not know counts as 'just now', so the master wins."""
    policy = spec.policy(c.table)
    if policy == "manual":
        return None
    if policy == "master_wins":
        return {"row": "master"}
    if policy == "local_wins":
        return {"row": "local"}
    name = c.table.name

    def known(key: Key, column: str) -> bool:
        return (name, key, column) in clock or (name, key, "*") in clock

    later = spec.local_last
    target = c.target or c.key
    if c.kind in FIELD_KINDS and c.fields:
        return {"fields": {f: ("local" if later and known(target, f) else "master", None) for f in c.fields}}
    if c.kind == "orphan":
        parent = spec.parent_of(c.table)
        assert parent is not None and c.parent_key is not None
        return {"row": "local" if later and (parent.name, c.parent_key, "*") in clock else "master"}
    if c.kind == "delete_update":
        master_known = bool(c.fields) and all(known(c.key, f) for f in c.fields)
        return {"row": "local" if later and master_known else "master"}
    return {"row": "local" if later and (name, target, "*") in clock else "master"}


def choice(decision: dict[str, Any], column: str | None) -> tuple[str, Any]:
    fields = decision.get("fields", {})
    if column is not None and column in fields:
        return fields[column]
    return decision.get("row") or "master", None


def load(
    spec: Spec,
    master: State,
    changes: list[Change],
    decisions: dict[tuple[str, Key], dict],
) -> Expected:
    """docs/sync_rules.md §4's decision table and §5's load, on plain dicts. Remapped keys become ('NEW', local key):
    which key the master's generator hands out does not matter, as long as it is free (the engine inserts
    rows with their own keys first; a collision makes the sync fail, which the property reports)."""
    state = deepcopy(master)
    inserts: list[tuple[int, TableSpec, Key, Row, str]] = []  # change, table, key, row, plain|remap|parent
    updates: list[tuple[int, TableSpec, Key, Row]] = []
    deletes: list[tuple[TableSpec, Key]] = []
    key_map: dict[tuple[str, Key], Key] = {}
    gone: set[tuple[str, Key]] = set()
    known_bug: str | None = None
    recreated: set[tuple[str, Key]] = set()

    def recreate(index: int, parent: TableSpec, key: Key, row: Row) -> None:
        """A parent the master deleted comes back from the replica's row, once however many need it."""
        if (parent.name, key) not in recreated:
            recreated.add((parent.name, key))
            inserts.append((index, parent, key, dict(row), "parent"))

    def decided_parent(index: int, c: Change, target: Key, values: Row) -> bool:
        """A decided write of the local reference to a parent the master deleted brings the parent back
        (as an orphan decided 'local'); without the replica's row of it the write is dropped (False)."""
        parent = spec.parent_of(c.table)
        fk = spec.fk_columns(c.table)
        if parent is None or c.parent_key is None or not set(fk) & set(values):
            return True
        row = master[c.table.name][target] | values
        if tuple(row[f] for f in fk) != c.parent_key:
            return True  # a mix of both sides' reference: checked when it is written
        if c.parent_row is None:
            return False
        recreate(index, parent, c.parent_key, c.parent_row)
        return True

    for index, c in enumerate(changes):
        local = c.local or {}
        t = c.table
        if c.action == "skip":
            continue
        if c.action == "apply":
            if c.op == "insert":
                inserts.append((index, t, c.key, dict(local), "plain"))
            elif c.op == "update":
                updates.append((index, t, c.key, {f: local[f] for f in c.apply_fields}))
            else:
                deletes.append((t, c.key))
            continue
        if c.action == "remap":
            inserts.append((index, t, c.key, dict(local), "remap"))
            continue
        decision = decisions[(t.name, c.key)]
        if c.kind == "update_update":
            values = {f: local[f] for f in c.apply_fields}
            for f in c.fields:
                side, value = choice(decision, f)
                if side == "local":
                    values[f] = local[f]
                elif side == "value":
                    values[f] = value
            if values and decided_parent(index, c, c.key, values):
                updates.append((index, t, c.key, values))
        elif c.kind == "update_delete":
            if choice(decision, None)[0] == "local":
                parent = spec.parent_of(t)
                if c.parent_key is not None and parent is not None:  # the master deleted its parent too
                    if c.parent_row is None:
                        continue
                    recreate(index, parent, c.parent_key, c.parent_row)
                inserts.append((index, t, c.key, dict(local), "plain"))
        elif c.kind == "delete_update":
            if choice(decision, None)[0] == "local":
                deletes.append((t, c.key))
        elif c.kind in ("insert_insert", "duplicate"):
            target = c.target or c.key
            if c.kind == "duplicate":
                key_map[(t.name, c.key)] = target
            values = {f: local[f] for f in c.fields if choice(decision, f)[0] == "local"}
            if values and decided_parent(index, c, target, values):
                updates.append((index, t, target, values))
        elif c.kind == "orphan":
            parent = spec.parent_of(t)
            assert parent is not None and c.parent_key is not None
            if choice(decision, None)[0] == "local" and c.parent_row is not None:
                recreate(index, parent, c.parent_key, c.parent_row)
                if c.op == "insert":
                    # A generated key the master holds too: remapped, as it would have been without the orphan.
                    how = "remap" if t.key == "serial" and c.key in master[t.name] else "plain"
                    inserts.append((index, t, c.key, dict(local), how))
                else:
                    updates.append((index, t, c.key, {f: local[f] for f in c.apply_fields}))
            elif c.op == "insert":
                gone.add((t.name, c.key))

    dropped = set(gone)
    writes: dict[tuple[str, Key], dict[str, set[tuple[int, Any]]]] = {}

    def wrote(index: int, t: TableSpec, key: Key, values: Row) -> None:
        fields = writes.setdefault((t.name, key), {})
        for f, v in values.items():
            fields.setdefault(f, set()).add((index, repr(v)))

    def rewrite(t: TableSpec, values: Row, current: Row | None = None) -> bool:
        """Point the reference at a remapped or duplicate parent; an update may write part of a composite
        reference, the rest is the current row's."""
        parent = spec.parent_of(t)
        fk = spec.fk_columns(t)
        row = (current or {}) | values
        if parent is None or not set(fk) & set(values):
            return True
        parent_key = tuple(row[f] for f in fk)
        if (parent.name, parent_key) in key_map:
            values.update(dict(zip(fk, key_map[(parent.name, parent_key)], strict=True)))
        elif (parent.name, parent_key) in dropped:
            return False
        return True

    for t in spec.tables:  # parents first
        parent = spec.parent_of(t)
        for index, table, key, row, how in inserts:
            if table is not t:
                continue
            if not rewrite(t, row):
                dropped.add((t.name, key))
                continue
            if how == "parent" and parent is not None:
                # A parent brought back whose own parent the master deleted too: dropped, and what needs it.
                grandparent = tuple(row[f] for f in spec.fk_columns(t))
                if None not in grandparent and grandparent not in state[parent.name]:
                    dropped.add((t.name, key))
                    continue
            if how == "remap":
                new_key = ("NEW", key)
                key_map[(t.name, key)] = (new_key,)
                state[t.name][(new_key,)] = row | {"id": new_key}
            else:
                if key in state[t.name]:
                    known_bug = known_bug or f"insert of {t.name} {key} into a taken key"
                state[t.name][key] = row
                wrote(index, t, key, row)
    # The engine orders its writes so that a natural key passed on within the load (freed by a delete or
    # an update, taken by an insert or an update) is unique at every statement: only the end state counts.
    for t in spec.tables:
        parent = spec.parent_of(t)
        fk = spec.fk_columns(t)
        for index, table, key, values in updates:
            if table is not t or key not in state[t.name] or not rewrite(t, values, state[t.name][key]):
                continue
            if changes[index].action == "conflict" and parent is not None and set(fk) & set(values):
                # A decided write whose reference points at a row the master no longer has is dropped.
                parent_key = tuple((state[t.name][key] | values)[f] for f in fk)
                if None not in parent_key and parent_key not in state[parent.name]:
                    continue
            new_values = {k: v for k, v in values.items() if k not in t.pk}
            state[t.name][key] = state[t.name][key] | new_values
            wrote(index, t, key, new_values)
    # Deletes: a row other rows (kept by the master or by this load) still reference stays.
    planned = {(t.name, key) for t, key in deletes if key in state[t.name]}
    changed = True
    while changed:
        changed = False
        for name, key in sorted(planned, key=repr):
            if referenced(spec, state, spec.table(name), key, planned):
                planned.discard((name, key))
                changed = True
    for name, key in planned:
        del state[name][key]
    if not nk_unique(spec, state):
        known_bug = known_bug or "a re-inserted row repeats a natural key the master gave another row"
    # Two changes of the load writing different values into one field of one master row (a local
    # row that is the master's by key and another that is it by natural key): which one lands last
    # is not defined by the design. Such rows are left out of the comparison.
    contested = {
        row for row, fields in writes.items() if any(len({v for _, v in w}) > 1 and len(w) > 1 for w in fields.values())
    }
    return Expected(set(), changes, state, known_bug, contested)


def nk_unique(spec: Spec, state: State) -> bool:
    for t in spec.tables:
        if t.natural:
            values = [r["nk"] for r in state[t.name].values() if r["nk"] is not None]
            if len(values) != len(set(values)):
                return False
    return True


def fk_consistent(spec: Spec, state: State) -> bool:
    for t in spec.tables:
        parent = spec.parent_of(t)
        if parent is None:
            continue
        fk = spec.fk_columns(t)
        for row in state[t.name].values():
            parent_key = tuple(row[f] for f in fk)
            if None not in parent_key and parent_key not in state[parent.name]:
                return False
    return True


def conflict_set(changes: list[Change]) -> set[tuple[str, Key, str, frozenset[str]]]:
    return {(c.table.name, c.key, c.kind or "", frozenset(c.fields)) for c in changes if c.action == "conflict"}


# ------------------------------------------------------------------------------------------------
# The real pipeline
# ------------------------------------------------------------------------------------------------


def read_state(engine: Engine, spec: Spec, tables: dict[str, sa.Table]) -> State:
    state: State = {}
    with engine.connect() as conn:
        for t in spec.tables:
            state[t.name] = {key_of(t, dict(r)): dict(r) for r in conn.execute(sa.select(tables[t.name])).mappings()}
    return state


def canonical(engine: Engine, spec: Spec, state: State, session_id: str | None) -> State:
    """The master's rows with keys a remap handed out replaced by ('NEW', local key)."""
    if session_id is None:
        return state
    import json

    with engine.connect() as conn:
        summary = json.loads(
            conn.execute(
                sa.select(store.sync_session.c.summary).where(store.sync_session.c.session_id == session_id)
            ).scalar_one()
            or "{}"
        )
        remapped_rows = {
            (r.table_name, tuple(json.loads(r.row_key).values()))
            for r in conn.execute(
                sa.select(store.sync_applied.c.table_name, store.sync_applied.c.row_key).where(
                    store.sync_applied.c.session_id == session_id, store.sync_applied.c.source == "remap"
                )
            )
        }
    new_keys: dict[tuple[str, Key], Key] = {}
    for item in summary.get("remapped", []):
        master_key = tuple(item["master_key"])
        if (item["table"], master_key) in remapped_rows:
            new_keys[(item["table"], master_key)] = (("NEW", tuple(item["local_key"])),)
    out: State = {}
    for t in spec.tables:
        parent = spec.parent_of(t)
        fk = spec.fk_columns(t)
        rows: dict[Key, Row] = {}
        for key, row in state[t.name].items():
            row = dict(row)
            if (t.name, key) in new_keys:
                key = new_keys[(t.name, key)]
                row["id"] = key[0]
            if parent is not None:
                parent_key = tuple(row[f] for f in fk)
                if (parent.name, parent_key) in new_keys:
                    row.update(dict(zip(fk, new_keys[(parent.name, parent_key)], strict=True)))
            rows[key] = row
        out[t.name] = rows
    return out


def engine_conflicts(engine: Engine, spec: Spec) -> dict[tuple[str, Key], dict[str, Any]]:
    out = {}
    for c in list_conflicts(engine):
        t = spec.table(c["table"])
        key = tuple(c["key"][k] for k in t.pk)
        out[(t.name, key)] = c
    return out


def draw_decision(data: Any, c: Change) -> dict[str, Any]:
    if c.kind in FIELD_KINDS and c.fields and data.draw(st.booleans()):
        fields = {}
        for f in c.fields:
            options = ["local", "master"] + (["value"] if c.kind == "update_update" and f in ("a", "b") else [])
            side = data.draw(st.sampled_from(options))
            value = data.draw(st.sampled_from(A_VALUES if f == "a" else B_VALUES)) if side == "value" else None
            fields[f] = (side, value)
        return {"fields": fields}
    return {"row": data.draw(st.sampled_from(["local", "master"]))}


@dataclass
class Backend:
    name: str
    url: str
    folder: Path
    reset: Any  # callable: empty the master before an example


def run_example(data: Any, backend: Backend, spec: Spec) -> None:
    backend.reset()
    metadata = spec.metadata()
    tables = dict(metadata.tables)
    engine = connect_master(backend.url, must_exist=False)
    try:
        _run_example(data, backend, spec, engine, metadata, tables)
    finally:
        engine.dispose()


def _advance_sequences(conn: sa.Connection, spec: Spec) -> None:
    if conn.dialect.name != "postgresql":
        return
    serial = [t.name for t in spec.tables if t.key == "serial"]
    for info in reflect_tables(conn, serial).values():
        advance_sequence(conn, info)


def _run_example(
    data: Any, backend: Backend, spec: Spec, engine: Engine, metadata: sa.MetaData, tables: dict[str, sa.Table]
) -> None:
    metadata.create_all(engine)
    empty: State = {t.name: {} for t in spec.tables}
    base_side = Side(spec, empty, is_replica=False)
    with engine.begin() as conn:
        for t in spec.tables:
            for _ in range(data.draw(st.integers(0, 5), label=f"base rows of {t.name}")):
                free = [k for k in KEY_DOMAIN[t.key] if k not in base_side.state[t.name]]
                row = draw_row(data, base_side, t, data.draw(st.sampled_from(free)))
                if row is not None:
                    base_side.state[t.name][key_of(t, row)] = row
                    conn.execute(sa.insert(tables[t.name]).values(row))
        _advance_sequences(conn, spec)
    note(f"schema: {spec}")
    note(f"base: {base_side.state}")
    init_master(engine, parse_settings(spec.settings_yaml(), "model.yaml"))
    replica = backend.folder / f"replica-{uuid.uuid4().hex}.db"
    checkout(engine, replica, "model", None)
    time.sleep(0.004)  # no master edit shares the checkout's millisecond (the clock counts later changes)
    base = deepcopy(base_side.state)
    local_side = Side(spec, deepcopy(base), is_replica=True)
    master_side = Side(spec, deepcopy(base), is_replica=False)
    local_engine = replica_engine(replica)
    phases = [(master_side, engine), (local_side, local_engine)]
    if not spec.local_last:
        phases.reverse()
    for index, (side, db) in enumerate(phases):
        if index:
            time.sleep(0.004)  # change times of the two sides never tie (ms resolution)
        with db.begin() as conn:
            for _ in range(data.draw(st.integers(1, 12), label="edits")):
                edit(data, side, conn, tables)
            if not side.is_replica:
                _advance_sequences(conn, spec)
    local_engine.dispose()
    note("\n".join(local_side.log + master_side.log))

    changes = detect(spec, base, local_side.state, master_side.state, master_side.clock, master_side.tombstones)
    expected_conflicts = conflict_set(changes)
    for c in changes:
        event(f"{c.op}: {c.kind or c.action}")
    decisions: dict[tuple[str, Key], dict[str, Any]] = {}
    for c in changes:
        if c.action == "conflict":
            auto = auto_decision(spec, c, master_side.clock)
            if auto is not None:
                decisions[(c.table.name, c.key)] = auto
    before = read_state(engine, spec, tables)
    try:
        result = run_sync(engine, replica)
        reported = engine_conflicts(engine, spec)
        reported_set = {
            (name, key, c["kind"], frozenset(f["name"] for f in c["fields"])) for (name, key), c in reported.items()
        }
        assert reported_set == expected_conflicts, "the engine's conflicts differ from the model's"
        if result.status == "waiting":
            for c in changes:
                if c.action == "conflict" and (c.table.name, c.key) not in decisions:
                    chosen = draw_decision(data, c)
                    conflict_id = reported[(c.table.name, c.key)]["id"]
                    if "row" in chosen:
                        decide(engine, conflict_id, chosen["row"], "model")
                    else:
                        for f, (side, value) in chosen["fields"].items():
                            decide(engine, conflict_id, side, "model", f, value)
                    decisions[(c.table.name, c.key)] = chosen
            result = run_sync(engine, replica)
    except SyncError as exc:
        expected = load(spec, master_side.state, changes, decisions)
        note(f"decisions: {decisions}; known bug: {expected.known_bug}; error: {exc}")
        if expected.known_bug is None:
            raise
        event(f"known bug: {expected.known_bug}")
        # A known engine bug: the sync must at least fail cleanly, the master's tables untouched.
        assert read_state(engine, spec, tables) == before
        return
    expected = load(spec, master_side.state, changes, decisions)
    note(f"decisions: {decisions}; known bug: {expected.known_bug}")
    if result.status == "waiting" and expected.known_bug is not None:
        # A known engine bug: the refused load went back to detection and dropped the decisions.
        event(f"known bug: {expected.known_bug}")
        assert read_state(engine, spec, tables) == before
        return
    assert result.status == "done", result
    got = canonical(engine, spec, read_state(engine, spec, tables), result.session_id)
    if expected.known_bug is not None:
        assert fk_consistent(spec, got) and nk_unique(spec, got)  # fixed in the engine meanwhile
        return
    assert expected.final is not None
    want = expected.final
    if expected.contested:
        event("contested row left out")
        got = {n: {k: r for k, r in rows.items() if (n, k) not in expected.contested} for n, rows in got.items()}
        want = {n: {k: r for k, r in rows.items() if (n, k) not in expected.contested} for n, rows in want.items()}
    assert got == want, "the master differs from the model's outcome"


# ------------------------------------------------------------------------------------------------
# The properties, one per backend
# ------------------------------------------------------------------------------------------------

settings.register_profile(
    "model",
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)


def _seeded(test: Any) -> Any:
    # Read at collection, after conftest took --hypothesis-seed (pytest_configure) or drew a new seed.
    from sync_pipeline_tests import conftest

    return seed(conftest.MODEL_SEED)(test)


def _spec_master(
    spec: Spec, metadata: sa.MetaData, url: str, fill: Callable[[Connection], None], settings_name: str
) -> Engine:
    """A master of `spec`'s tables holding the rows `fill` writes, its sequences past them, initialised."""
    engine = connect_master(url, must_exist=False)
    metadata.create_all(engine)
    with engine.begin() as conn:
        fill(conn)
        _advance_sequences(conn, spec)
    init_master(engine, parse_settings(spec.settings_yaml(), settings_name))
    return engine


@pytest.fixture(scope="module")
def sqlite_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    folder = tmp_path_factory.mktemp("model-sqlite")
    counter = itertools.count()
    state = {"url": ""}

    def reset() -> None:
        for old in folder.glob("*.db*"):
            old.unlink()
        state["url"] = f"sqlite:///{folder / f'master-{next(counter)}.db'}"
        backend.url = state["url"]

    backend = Backend("sqlite", "", folder, reset)
    yield backend


@pytest.fixture(scope="module")
def postgresql_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    require_postgres()
    folder = tmp_path_factory.mktemp("model-pg")
    schema = f"m_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    url = sa.engine.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})

    def reset() -> None:
        for old in folder.glob("*.db*"):
            old.unlink()
        with admin.begin() as conn:  # one schema for every example: its tables dropped and made anew
            conn.execute(sa.schema.DropSchema(schema, cascade=True, if_exists=True))
            drop_key_store(conn, schema)
            conn.execute(sa.schema.CreateSchema(schema))

    yield Backend("postgresql", url.render_as_string(hide_password=False), folder, reset)
    with admin.begin() as conn:
        conn.execute(sa.schema.DropSchema(schema, cascade=True, if_exists=True))
        drop_key_store(conn, schema)
    admin.dispose()


def _database_anew(admin: Engine, quoted: str, create: bool = True) -> None:
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {quoted}")
        if create:
            conn.exec_driver_sql(f"CREATE DATABASE {quoted} CHARACTER SET utf8mb4")


@pytest.fixture(scope="module")
def mariadb_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    """One MariaDB database for every example, dropped and made anew (with the replicas) per example."""
    require_mariadb()
    admin = sa.create_engine(MARIADB_URL)
    database = f"m_{uuid.uuid4().hex[:12]}"
    quoted = admin.dialect.identifier_preparer.quote(database)  # a generated name
    url = sa.engine.make_url(MARIADB_URL).set(database=database).render_as_string(hide_password=False)
    backend = Backend("mariadb", url, tmp_path_factory.mktemp("model-mariadb"), None)

    def reset() -> None:
        _database_anew(admin, quoted)
        for replica in backend.folder.glob("*.db*"):
            replica.unlink()

    backend.reset = reset
    yield backend
    _database_anew(admin, quoted, create=False)
    admin.dispose()


@_seeded
@settings(settings.get_profile("model"), max_examples=EXAMPLES)
@given(spec=specs(), data=st.data())
def test_pipeline_matches_the_model_on_sqlite(sqlite_backend: Backend, spec: Spec, data: Any) -> None:
    run_example(data, sqlite_backend, spec)


@_seeded
@settings(settings.get_profile("model"), max_examples=PG_EXAMPLES)
@given(spec=specs(), data=st.data())
def test_pipeline_matches_the_model_on_postgresql(postgresql_backend: Backend, spec: Spec, data: Any) -> None:
    run_example(data, postgresql_backend, spec)


@_seeded
@settings(settings.get_profile("model"), max_examples=PG_EXAMPLES)
@given(spec=specs(), data=st.data())
def test_pipeline_matches_the_model_on_mariadb(mariadb_backend: Backend, spec: Spec, data: Any) -> None:
    run_example(data, mariadb_backend, spec)


# ------------------------------------------------------------------------------------------------
# Counterexamples found by the property (shrunk), kept as regular tests
# ------------------------------------------------------------------------------------------------

P, C = TABLES["parent"], TABLES["child"]


# Found by the property: the re-inserted row's parent was gone too, and the sync failed for good. Fixed.
@pytest.mark.parametrize("policy", ["local_wins", "newest_wins"])
def test_reinsert_of_a_row_whose_parent_the_master_deleted(master_url: str, tmp_path: Path, policy: str) -> None:
    engine = make_master(master_url, policy)
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(C).where(C.c.id == 1).values(label="edited offline"))
    time.sleep(0.005)
    with engine.begin() as m:
        m.execute(sa.delete(C).where(C.c.parent_id == 1))
        m.execute(sa.delete(P).where(P.c.id == 1))
    if policy == "newest_wins":  # make the local edit the newer one
        with replica_engine(replica).begin() as r:
            r.execute(sa.update(C).where(C.c.id == 1).values(label="edited offline again"))
    result = run_sync(engine, replica)
    assert result.status == "done"
    with engine.connect() as conn:
        child = conn.execute(sa.select(C).where(C.c.id == 1)).mappings().first()
        parent = conn.execute(sa.select(P).where(P.c.id == 1)).mappings().first()
    # Either the parent comes back with the child (as for an orphan, local side) or neither does.
    assert (child is None) == (parent is None)


def test_two_new_local_rows_and_one_new_master_row(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url, "master_wins")
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        local_ids = [
            r.execute(sa.insert(P).values(name=n, city="L", email=f"{n}@local.example").returning(P.c.id)).scalar_one()
            for n in ("first", "second", "third")
        ]
    with engine.begin() as m:
        master_id = m.execute(
            sa.insert(P).values(name="colleague", city="M", email="m@example.com").returning(P.c.id)
        ).scalar_one()
    assert local_ids == [6, 7, 8] and master_id == 6
    result = run_sync(engine, replica)  # SyncError: the master refused ... (parent.id)
    assert result.status == "done"
    with engine.connect() as conn:
        names = set(conn.execute(sa.select(P.c.name).where(P.c.id > 5)).scalars())
    assert names == {"first", "second", "third", "colleague"}


# Found by the property: the new record was taken for a duplicate of the deleted one (its natural key),
# mapped onto it, and the delete then removed it. Fixed: a row whose delete applies frees its natural key.
@pytest.mark.parametrize("policy", ["master_wins", "local_wins"])
def test_record_deleted_and_created_anew_with_its_natural_key(master_url: str, tmp_path: Path, policy: str) -> None:
    engine = make_master(master_url, policy)
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.delete(C).where(C.c.parent_id == 4))
        r.execute(sa.delete(P).where(P.c.id == 4))
        r.execute(sa.insert(P).values(id=40, name="Created anew", city="L", email="p4@example.com"))
    assert run_sync(engine, replica).status == "done"
    with engine.connect() as conn:
        found = conn.execute(sa.select(P.c.name).where(P.c.email == "p4@example.com")).scalars().all()
    assert found == ["Created anew"]


def test_children_moved_away_then_parent_deleted(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url, "master_wins")
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(C).where(C.c.parent_id == 4).values(parent_id=1))
        r.execute(sa.delete(P).where(P.c.id == 4))
    assert run_sync(engine, replica).status == "done"
    assert [c["kind"] for c in list_conflicts(engine)] == []
    with engine.connect() as conn:
        assert conn.execute(sa.select(P).where(P.c.id == 4)).first() is None
        assert set(conn.execute(sa.select(C.c.parent_id).where(C.c.id.in_([4, 9]))).scalars()) == {1}


def test_parent_and_child_both_edited_offline_and_both_deleted_on_the_master(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url, "local_wins")
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(P).where(P.c.id == 3).values(city="edited offline"))
        r.execute(sa.update(C).where(C.c.id == 3).values(label="edited offline"))
    with engine.begin() as m:
        m.execute(sa.delete(C).where(C.c.parent_id == 3))
        m.execute(sa.delete(P).where(P.c.id == 3))
    assert run_sync(engine, replica).status == "done"  # SyncError: UNIQUE constraint failed: parent.id
    with engine.connect() as conn:
        assert conn.execute(sa.select(P.c.city).where(P.c.id == 3)).scalar_one() == "edited offline"
        assert conn.execute(sa.select(C.c.label).where(C.c.id == 3)).scalar_one() == "edited offline"


# Found by the property: inserts, updates, deletes went in that order and the unique index refused the
# e-mail address on the way. Fixed: the load frees a unique value before another row takes it.
def test_natural_key_passed_from_a_deleted_row_to_another(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url, "master_wins")
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:  # the e-mail address moves from record 4 to record 3
        r.execute(sa.delete(C).where(C.c.parent_id == 4))
        r.execute(sa.delete(P).where(P.c.id == 4))
        r.execute(sa.update(P).where(P.c.id == 3).values(email="p4@example.com"))
    assert run_sync(engine, replica).status == "done"  # SyncError: UNIQUE constraint failed: parent.email
    with engine.connect() as conn:
        assert conn.execute(sa.select(P.c.id).where(P.c.email == "p4@example.com")).scalars().all() == [3]


def test_subtree_deleted_locally_while_the_master_changed_a_grandchild(master_url: str, tmp_path: Path) -> None:
    spec = Spec(
        (
            TableSpec("t0", "serial", None, False, False, "m0", None),
            TableSpec("t1", "serial", 0, False, False, "m0", None),
            TableSpec("t2", "serial", 1, False, False, "m0", None),
        ),
        (("m0", "master_wins"), ("m1", "master_wins")),
        False,
    )
    metadata = spec.metadata()
    t0, t1, t2 = (metadata.tables[n] for n in ("t0", "t1", "t2"))

    def fill(conn: Connection) -> None:
        conn.execute(sa.insert(t0).values(id=1, a=0, b="x"))
        conn.execute(sa.insert(t1).values(id=1, a=0, b="x", p_id=1))
        conn.execute(sa.insert(t2).values(id=1, a=0, b="x", p_id=1))

    engine = _spec_master(spec, metadata, master_url, fill, "three-levels.yaml")
    replica = tmp_path / "three-levels.db"
    checkout(engine, replica, "tester", None)
    with replica_engine(replica).begin() as r:  # the whole subtree, children first
        for table in (t2, t1, t0):
            r.execute(sa.delete(table))
    with engine.begin() as m:
        m.execute(sa.update(t2).where(t2.c.id == 1).values(a=1))
    assert run_sync(engine, replica).status == "done"  # SyncError: FOREIGN KEY constraint failed
    with engine.connect() as conn:  # the changed grandchild stays, and with it the rows it needs
        assert [conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() for t in (t0, t1, t2)] == [1, 1, 1]


# Found by the property: a decided write of a reference had no orphan check; the FK broke and the sync
# failed for good. Fixed: the parent comes back from the replica's row, as for an orphan decided 'local'.
def test_duplicate_decided_local_pointing_at_a_parent_the_master_deleted(master_url: str, tmp_path: Path) -> None:
    settings = (
        "modules:\n  core:\n    policy: local_wins\n    tables:\n      parent: {natural_key: [email]}\n"
        "      child: {natural_key: [label]}\n      tagged: {}\n"
    )
    engine = make_master(master_url, settings=settings)
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.insert(C).values(id=200, parent_id=3, label="same record", amount=None))
    with engine.begin() as m:
        m.execute(sa.delete(C).where(C.c.parent_id == 3))
        m.execute(sa.delete(P).where(P.c.id == 3))
        m.execute(sa.insert(C).values(id=201, parent_id=1, label="same record", amount=None))
    assert run_sync(engine, replica).status == "done"  # SyncError: FOREIGN KEY constraint failed
    with engine.connect() as conn:
        parent_id = conn.execute(sa.select(C.c.parent_id).where(C.c.id == 201)).scalar_one()
        assert conn.execute(sa.select(P).where(P.c.id == parent_id)).first() is not None
        assert parent_id == 3  # the local side won: its parent is back, from the replica's row
        assert conn.execute(sa.select(P.c.email).where(P.c.id == 3)).scalar_one() == "p3@example.com"


# Found by the property: an update wrote one column of a composite reference (the other stayed), pointing
# at a new local parent that is a master row by its natural key; the reference was not rewritten to the
# master's key because it is not whole in the update, and the FK broke. Fixed: the rest comes from the row.
def test_part_of_a_composite_reference_pointed_at_a_duplicate_parent(master_url: str, tmp_path: Path) -> None:
    spec = Spec(
        (
            TableSpec("t0", "composite", None, False, True, "m0", None),
            TableSpec("t1", "serial", 0, True, False, "m0", None),
        ),
        (("m0", "master_wins"), ("m1", "master_wins")),
        False,
    )
    metadata = spec.metadata()
    t0, t1 = metadata.tables["t0"], metadata.tables["t1"]

    def fill(conn: Connection) -> None:
        conn.execute(sa.insert(t0).values(code="k0", num=0, a=0, b="x", nk=None))
        conn.execute(sa.insert(t1).values(id=1, a=0, b="x", p_code="k0", p_num=0))

    engine = _spec_master(spec, metadata, master_url, fill, "composite.yaml")
    replica = tmp_path / "composite.db"
    checkout(engine, replica, "tester", None)
    with replica_engine(replica).begin() as r:  # a new parent; the child moves to it (only `num` changes)
        r.execute(sa.insert(t0).values(code="k0", num=2, a=0, b="x", nk="n4"))
        r.execute(sa.update(t1).where(t1.c.id == 1).values(p_num=2))
    with engine.begin() as m:  # the same record made on the master under another key
        m.execute(sa.insert(t0).values(code="k0", num=1, a=0, b="x", nk="n4"))
    assert run_sync(engine, replica).status == "done"  # SyncError: FOREIGN KEY constraint failed
    assert [c["kind"] for c in list_conflicts(engine)] == ["duplicate"]
    with engine.connect() as conn:
        assert conn.execute(sa.select(t1.c.p_code, t1.c.p_num)).one() == ("k0", 1)
        assert conn.execute(sa.select(sa.func.count()).select_from(t0)).scalar_one() == 2


# Found by the property: an orphan decided 'local' was inserted under its own generated key, which the
# master had handed to a row of its own meanwhile (without the orphan it would have been remapped): the
# insert never matched the check (a master row under its key) and the sync failed. Fixed: it is remapped too.
def test_orphan_decided_local_whose_generated_key_the_master_took(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url, "local_wins")
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        local_id = r.execute(
            sa.insert(C).values(parent_id=4, label="local child of 4", amount=None).returning(C.c.id)
        ).scalar_one()
    with engine.begin() as m:
        m.execute(sa.delete(C).where(C.c.parent_id == 4))
        m.execute(sa.delete(P).where(P.c.id == 4))
        master_id = m.execute(
            sa.insert(C).values(parent_id=1, label="master's new child", amount=None).returning(C.c.id)
        ).scalar_one()
    assert local_id == master_id == 11
    result = run_sync(engine, replica)  # SyncError: the master kept changing (stale every round)
    assert result.status == "done"
    assert [c["kind"] for c in list_conflicts(engine)] == ["orphan"]
    with engine.connect() as conn:
        assert conn.execute(sa.select(C.c.label).where(C.c.id == 11)).scalar_one() == "master's new child"
        moved = conn.execute(sa.select(C.c.id, C.c.parent_id).where(C.c.label == "local child of 4")).one()
        assert moved.id != 11 and moved.parent_id == 4
        assert conn.execute(sa.select(P.c.name).where(P.c.id == 4)).scalar_one() == "P4"


# Found by the property: an orphan decided 'local' brings its parent back from the replica, but the
# master had deleted the parent's parent too; the re-created parent broke the FK and the sync failed for
# good. Fixed: such a parent is dropped (and with it the rows that need it), as for an orphan decided
# 'master'.
def test_orphan_decided_local_whose_grandparent_the_master_deleted(master_url: str, tmp_path: Path) -> None:
    spec = Spec(
        (
            TableSpec("t0", "serial", None, False, True, "m0", None),
            TableSpec("t1", "serial", 0, False, False, "m0", None),
            TableSpec("t2", "serial", 1, False, False, "m0", "local_wins"),
        ),
        (("m0", "master_wins"), ("m1", "master_wins")),
        True,
    )
    metadata = spec.metadata()
    t0, t1, t2 = (metadata.tables[n] for n in ("t0", "t1", "t2"))

    def fill(conn: Connection) -> None:
        conn.execute(sa.insert(t0).values(id=5, a=0, b="x", nk="n0"))
        conn.execute(sa.insert(t1).values(id=1, a=0, b="x", p_id=5))

    engine = _spec_master(spec, metadata, master_url, fill, "grandparent.yaml")
    replica = tmp_path / "grandparent.db"
    checkout(engine, replica, "tester", None)
    with replica_engine(replica).begin() as r:
        r.execute(sa.insert(t2).values(id=3, a=0, b="x", p_id=1))
    with engine.begin() as m:  # the whole subtree
        m.execute(sa.delete(t1))
        m.execute(sa.delete(t0))
    result = run_sync(engine, replica)  # SyncError: FOREIGN KEY constraint failed
    assert result.status == "done"
    assert [c["kind"] for c in list_conflicts(engine)] == ["orphan"]
    with engine.connect() as conn:
        assert [conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one() for t in (t0, t1, t2)] == [0, 0, 0]


# Issue 16 (found by a newcomer's random seed): a record made anew under another key with the old one's
# natural key, its child moved to it, the old one deleted; the master handed the new key to a row of its
# own meanwhile (remapped), or did not. The new row waited for the delete (its natural key), the delete for
# the child (still pointing at it), the child for the new row: no order worked, and the unique index
# refused (`UNIQUE constraint failed: t0.nk`). Fixed: the row to be deleted lets go of its natural key first.
@pytest.mark.parametrize("master_took_the_key", [False, True])
@pytest.mark.parametrize("policy", ["master_wins", "local_wins"])
def test_natural_key_handed_to_a_new_row_that_takes_the_old_rows_children(
    master_url: str, tmp_path: Path, master_took_the_key: bool, policy: str
) -> None:
    spec = Spec(
        (
            TableSpec("t0", "serial", None, False, True, "m0", None),
            TableSpec("t1", "serial", 0, True, False, "m0", None),
        ),
        (("m0", policy), ("m1", policy)),
        True,
    )
    metadata = spec.metadata()
    t0, t1 = metadata.tables["t0"], metadata.tables["t1"]

    def fill(conn: Connection) -> None:
        conn.execute(sa.insert(t0).values(id=1, a=0, b="x", nk="n4"))
        conn.execute(sa.insert(t1).values(id=1, a=0, b="x", p_id=1))

    engine = _spec_master(spec, metadata, master_url, fill, "handed-over.yaml")
    replica = tmp_path / "handed-over.db"
    checkout(engine, replica, "tester", None)
    with replica_engine(replica).begin() as r:
        new_id = r.execute(sa.insert(t0).values(a=1, b="y", nk="n4").returning(t0.c.id)).scalar_one()
        r.execute(sa.update(t1).where(t1.c.id == 1).values(p_id=new_id))
        r.execute(sa.delete(t0).where(t0.c.id == 1))
    if master_took_the_key:
        with engine.begin() as m:
            m.execute(sa.insert(t0).values(a=2, b="z", nk=None))
    result = run_sync(engine, replica)  # SyncError: the master refused ...: UNIQUE constraint failed: t0.nk
    assert result.status == "done"
    assert list_conflicts(engine) == []
    with engine.connect() as conn:
        records = {r.nk: r for r in conn.execute(sa.select(t0))}
        child = conn.execute(sa.select(t1)).one()
    assert set(records) == ({"n4", None} if master_took_the_key else {"n4"})
    assert (records["n4"].a, records["n4"].b) == (1, "y") and records["n4"].id != 1
    assert child.p_id == records["n4"].id


# Found by a random seed (fifth session): two rows swap their natural keys while each also moves to another
# parent (one of them new). The swap is a cycle that only letting go of the old values first (NULL) can
# write, and that was refused for updates writing a reference (a dropped update would have kept NULL): the
# unique index refused the load (`UNIQUE constraint failed: t1.nk`). Fixed: such updates let go too, and an
# update the writer drops afterwards takes its value back.
@pytest.mark.parametrize("parent_gone", [False, True])
def test_natural_keys_swapped_by_rows_that_move_to_other_parents(
    master_url: str, tmp_path: Path, parent_gone: bool
) -> None:
    spec = Spec(
        (
            TableSpec("t0", "serial", None, False, False, "m0", None),
            TableSpec("t1", "text", 0, False, True, "m0", None),
        ),
        (("m0", "master_wins"), ("m1", "master_wins")),
        True,
    )
    metadata = spec.metadata()
    t0, t1 = metadata.tables["t0"], metadata.tables["t1"]

    def fill(conn: Connection) -> None:
        conn.execute(sa.insert(t0), [{"id": i, "a": 0, "b": "x"} for i in (1, 2, 5)])
        conn.execute(
            sa.insert(t1),
            [
                {"code": "k3", "a": 0, "b": "y", "nk": "n0", "p_id": 5},
                {"code": "k5", "a": 1, "b": "y", "nk": "n2", "p_id": 5},
            ],
        )

    engine = _spec_master(spec, metadata, master_url, fill, "swap.yaml")
    replica = tmp_path / "swap.db"
    checkout(engine, replica, "tester", None)
    with replica_engine(replica).begin() as r:
        new_parent = r.execute(sa.insert(t0).values(a=1, b="z").returning(t0.c.id)).scalar_one()
        r.execute(sa.update(t1).where(t1.c.code == "k3").values(nk="n2", p_id=2))
        r.execute(sa.update(t1).where(t1.c.code == "k5").values(nk="n0", p_id=new_parent))
    if parent_gone:
        # The master deletes the parent k3 moves to: k3's update is left out and k3 keeps n0, which k5 takes.
        # Open weakness (docs/reliability.md): not a conflict yet; the load fails cleanly, nothing written.
        with engine.begin() as m:
            m.execute(sa.delete(t0).where(t0.c.id == 2))
        with pytest.raises(SyncError, match="the master refused the session's changes"):
            run_sync(engine, replica)
        with engine.connect() as conn:
            assert {r.code: (r.nk, r.p_id) for r in conn.execute(sa.select(t1))} == {"k3": ("n0", 5), "k5": ("n2", 5)}
        return

    result = run_sync(engine, replica)

    assert result.status == "done"
    with engine.connect() as conn:
        rows = {r.code: (r.nk, r.p_id) for r in conn.execute(sa.select(t1))}
        new_id = conn.execute(sa.select(t0.c.id).where(t0.c.a == 1)).scalar_one()
    assert rows == {"k3": ("n2", 2), "k5": ("n0", new_id)}
