"""Reflection of the master's tables: keys, generated keys, foreign keys, FK order. The value rules
(normalising, encoding to JSON, validating) are in `values.py`, re-exported here for their callers.

What differs between databases (generated keys, partitions, sequences, triggers) is asked of the
master's `DialectImpl` (`dialects/`).
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine.column_types import (
    CarriedAsText,
    base_type,
    carrier_of,
    prepare_table,
)
from sync_pipeline.engine.dialects import DialectImpl, impl_for
from sync_pipeline.engine.triggers import MasterTrigger, find_triggers, maintained_columns
from sync_pipeline.engine.values import (
    ValueRejected,
    carrier_normalizer,
    decode_row,
    dumps,
    dumps_plain,
    encode,
    encode_row,
    normalize,
    normalize_row,
    normalizer,
)

KEY_SEPARATOR = "\x1f"  # ASCII unit separator: cannot appear in a key value by accident


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    parent_table: str
    parent_columns: tuple[str, ...]
    # The master's referential actions (CASCADE, SET NULL, …), which the replica mirrors: not part of
    # what makes two references the same one.
    on_delete: str | None = field(default=None, compare=False)
    on_update: str | None = field(default=None, compare=False)

    def parent_key(self, row: Mapping[str, Any], parent_pk: Sequence[str]) -> tuple[Any, ...] | None:
        """The parent's primary key that `row` names through this reference, in the key's order; None
        where the reference points at other columns (a unique `code`): its values are no key, and a key
        map or a set of keys must not be asked about them."""
        if sorted(self.parent_columns) != sorted(parent_pk):
            return None
        child_of = dict(zip(self.parent_columns, self.columns, strict=True))
        return tuple(row[child_of[c]] for c in parent_pk)

    def child_values(self, parent_key: Sequence[Any], parent_pk: Sequence[str]) -> dict[str, Any]:
        """This reference's columns pointing at the parent row with the primary key `parent_key`."""
        child_of = dict(zip(self.parent_columns, self.columns, strict=True))
        return {child_of[c]: v for c, v in zip(parent_pk, parent_key, strict=True)}


@dataclass
class TableInfo:
    """What the engine needs to know of one synchronised table."""

    table: sa.Table
    pk: tuple[str, ...]
    generated_pk: bool
    foreign_keys: list[ForeignKey] = field(default_factory=list)
    # Columns the database computes (GENERATED ALWAYS AS …): never written, read back after the load.
    generated_columns: frozenset[str] = frozenset()
    # GENERATED ALWAYS AS IDENTITY: inserted with OVERRIDING SYSTEM VALUE, never updated (see load_columns).
    identity_always: frozenset[str] = frozenset()
    # column -> the sequence that feeds it (DEFAULT nextval, OWNED BY, identity): advanced past written keys.
    sequences: dict[str, str] = field(default_factory=dict)
    # The master's own triggers on this table or writing into it, and the columns they maintain.
    triggers: list[MasterTrigger] = field(default_factory=list)
    maintained_columns: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return self.table.name

    @functools.cached_property
    def columns(self) -> list[str]:
        # Asked for per row in the hot loops of extraction and detection: computed once.
        return [c.name for c in self.table.columns]

    @functools.cached_property
    def normalizers(self) -> list[tuple[str, Any]]:
        """(column, its `normalize`) in column order: the per-row loops look nothing else up."""
        return [(c.name, normalizer(c)) for c in self.table.columns]

    @functools.cached_property
    def key_normalizers(self) -> list[Any]:
        return [normalizer(self.table.columns[c]) for c in self.pk]

    def key_of(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(row[c] for c in self.pk)

    def key_dict(self, key: tuple[Any, ...]) -> dict[str, Any]:
        return dict(zip(self.pk, key, strict=True))


def filled_by_default(column: sa.Column[Any]) -> bool:
    """A NOT NULL column the master fills when an insert leaves it out (a default, an identity): a local
    insert may leave it empty, and the load then leaves it to the master (`load_columns.writable`)."""
    return not column.nullable and (column.server_default is not None or column.identity is not None)


def reflect_tables(bind: Engine | Connection, names: Iterable[str]) -> dict[str, TableInfo]:
    """Reflect the named tables (and what their FKs point at) from the master."""
    wanted = list(dict.fromkeys(names))
    metadata = sa.MetaData()
    inspector = sa.inspect(bind)
    existing = set(inspector.get_table_names())
    missing = [n for n in wanted if n not in existing]
    if missing:
        raise KeyError(missing)
    with warnings.catch_warnings():
        # Types SQLAlchemy does not know (point, xml, composite and extension types) are carried as the
        # database's text (column_types): not worth a warning on every command.
        warnings.filterwarnings("ignore", "Did not recognize type", sa.exc.SAWarning)
        metadata.reflect(bind=bind, only=wanted, resolve_fks=True)
    impl = impl_for(bind)
    infos: dict[str, TableInfo] = {}
    for name in wanted:
        table = metadata.tables[name]
        pk = tuple(c.name for c in table.primary_key.columns)
        fks = [
            ForeignKey(
                tuple(e.parent.name for e in constraint.elements),
                constraint.referred_table.name,
                tuple(e.column.name for e in constraint.elements),
                constraint.ondelete,
                constraint.onupdate,
            )
            for constraint in table.foreign_key_constraints
        ]
        prepare_table(bind, table)  # value rules by base type; see column_types
        infos[name] = TableInfo(table, pk, _is_generated_key(table, pk, impl), fks)
    _reflect_write_rules(bind, metadata, infos)
    return infos


def _reflect_write_rules(bind: Engine | Connection, metadata: sa.MetaData, infos: dict[str, TableInfo]) -> None:
    """What decides how the load writes a table: computed and identity columns, the sequences behind its
    columns, foreign keys declared on its partitions only, and the master's triggers."""
    names = list(infos)
    impl = impl_for(bind)
    for name, columns, referred, referred_columns in impl.partition_foreign_keys(bind, names):
        if referred not in metadata.tables:
            sa.Table(referred, metadata, autoload_with=bind)
        fk = ForeignKey(columns, referred, referred_columns)
        if fk not in infos[name].foreign_keys:
            infos[name].foreign_keys.append(fk)
    sequences = impl.find_sequences(bind, names)
    triggers = find_triggers(bind, {name: info.table for name, info in infos.items()})
    for name, info in infos.items():
        columns = info.table.columns
        info.generated_columns = frozenset(c.name for c in columns if c.computed is not None)
        info.identity_always = frozenset(c.name for c in columns if c.identity is not None and c.identity.always)
        info.sequences = sequences.get(name, {})
        info.triggers = triggers.get(name, [])
        info.maintained_columns = maintained_columns(info.table, info.triggers)


def _is_generated_key(table: sa.Table, pk: tuple[str, ...], impl: DialectImpl) -> bool:
    if len(pk) != 1:
        return False
    column = table.columns[pk[0]]
    column_type = column.type.original if isinstance(column.type, CarriedAsText) else column.type
    if not isinstance(base_type(column_type), sa.Integer):  # a domain over an integer is an integer key
        return False
    return impl.key_is_generated(column, column_type)


def fk_order(tables: Mapping[str, TableInfo]) -> list[str]:
    """Table names parents first (for inserts); reverse it for deletes. Foreign keys the table does not
    declare itself (on its partitions) count too."""
    extra = [
        (tables[fk.parent_table].table, info.table)
        for info in tables.values()
        for fk in info.foreign_keys
        if fk.parent_table in tables and fk.parent_table != info.name
    ]
    sorted_tables = sa.schema.sort_tables([info.table for info in tables.values()], extra_dependencies=extra)
    return [t.name for t in sorted_tables if t.name in tables]


def key_text(table: sa.Table, pk: tuple[str, ...], values: tuple[Any, ...]) -> sa.ColumnElement[str]:
    """SQL that renders a key the way the change-capture triggers render it (CAST(col AS TEXT))."""
    parts: list[sa.ColumnElement[Any]] = []
    for name, value in zip(pk, values, strict=True):
        column_type = table.columns[name].type
        if parts:
            parts.append(sa.literal(KEY_SEPARATOR, sa.Text))
        if carrier_of(table.columns[name]).kind == "text":
            parts.append(sa.literal(value, sa.Text))  # already the database's text of the value
        else:
            parts.append(sa.cast(sa.cast(sa.literal(value, column_type), column_type), sa.Text))
    expression = parts[0]
    for part in parts[1:]:
        expression = expression.op("||")(part)
    return expression


@dataclass(frozen=True)
class Reference:
    """A foreign key of some master table (`child`) that points at one of our tables."""

    child: sa.Table
    columns: tuple[str, ...]
    parent_columns: tuple[str, ...]


def references_to(bind: Engine | Connection, parents: Iterable[str]) -> dict[str, list[Reference]]:
    """Every FK in the whole master that points at one of `parents`, also from tables outside the
    replica's modules: a row they reference must not be deleted from under them.
    """
    wanted = set(parents)
    inspector = sa.inspect(bind)
    found: dict[str, list[tuple[str, tuple[str, ...], tuple[str, ...]]]] = {}
    for (_schema, child), fks in inspector.get_multi_foreign_keys().items():
        for fk in fks:
            if fk["referred_table"] in wanted:
                found.setdefault(fk["referred_table"], []).append(
                    (child, tuple(fk["constrained_columns"]), tuple(fk["referred_columns"]))
                )
    if not found:
        return {}
    metadata = sa.MetaData()
    metadata.reflect(bind=bind, only=sorted({c for refs in found.values() for c, _, _ in refs}))
    return {
        parent: [Reference(metadata.tables[c], cols, pcols) for c, cols, pcols in refs]
        for parent, refs in found.items()
    }


__all__ = [  # the value rules live in `values` and are imported from here by most of the engine
    "KEY_SEPARATOR",
    "ForeignKey",
    "Reference",
    "TableInfo",
    "ValueRejected",
    "carrier_normalizer",
    "decode_row",
    "dumps",
    "dumps_plain",
    "encode",
    "encode_row",
    "fk_order",
    "key_text",
    "normalize",
    "normalize_row",
    "normalizer",
    "reflect_tables",
    "references_to",
]
