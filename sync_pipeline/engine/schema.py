"""Reflection of the master's tables: keys, generated keys, foreign keys, FK order, and the value
rules (normalising, encoding to JSON, validating) that make a value read from SQLite comparable to
the same value read from the master.

Dialect differences of reflection live here; dialect SQL of change capture lives in `capture/`.
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import json
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine.partitions import partitions_for
from sync_pipeline.engine.sequences import sequences_for
from sync_pipeline.engine.triggers import MasterTrigger, find_triggers, maintained_columns

KEY_SEPARATOR = "\x1f"  # ASCII unit separator: cannot appear in a key value by accident


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    parent_table: str
    parent_columns: tuple[str, ...]


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

    def key_of(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(row[c] for c in self.pk)

    def key_dict(self, key: tuple[Any, ...]) -> dict[str, Any]:
        return dict(zip(self.pk, key, strict=True))


def reflect_tables(bind: Engine | Connection, names: Iterable[str]) -> dict[str, TableInfo]:
    """Reflect the named tables (and what their FKs point at) from the master."""
    wanted = list(dict.fromkeys(names))
    metadata = sa.MetaData()
    inspector = sa.inspect(bind)
    existing = set(inspector.get_table_names())
    missing = [n for n in wanted if n not in existing]
    if missing:
        raise KeyError(missing)
    metadata.reflect(bind=bind, only=wanted, resolve_fks=True)
    dialect = bind.dialect.name
    infos: dict[str, TableInfo] = {}
    for name in wanted:
        table = metadata.tables[name]
        pk = tuple(c.name for c in table.primary_key.columns)
        fks = [
            ForeignKey(
                tuple(e.parent.name for e in constraint.elements),
                constraint.referred_table.name,
                tuple(e.column.name for e in constraint.elements),
            )
            for constraint in table.foreign_key_constraints
        ]
        for column in table.columns:
            if isinstance(column.type, sa.Integer):
                # SQLite's INTEGER holds 64 bits; elsewhere the type's own width counts.
                small, big = isinstance(column.type, sa.SmallInteger), isinstance(column.type, sa.BigInteger)
                column.info["int_bits"] = 64 if dialect == "sqlite" or big else 16 if small else 32
        infos[name] = TableInfo(table, pk, _is_generated_key(table, pk, dialect), fks)
    _reflect_write_rules(bind, metadata, infos)
    return infos


def _reflect_write_rules(bind: Engine | Connection, metadata: sa.MetaData, infos: dict[str, TableInfo]) -> None:
    """What decides how the load writes a table: computed and identity columns, the sequences behind its
    columns, foreign keys declared on its partitions only, and the master's triggers."""
    names = list(infos)
    for name, columns, referred, referred_columns in partitions_for(bind.dialect.name).foreign_keys(bind, names):
        if referred not in metadata.tables:
            sa.Table(referred, metadata, autoload_with=bind)
        fk = ForeignKey(columns, referred, referred_columns)
        if fk not in infos[name].foreign_keys:
            infos[name].foreign_keys.append(fk)
    sequences = sequences_for(bind.dialect.name).find(bind, names)
    triggers = find_triggers(bind, {name: info.table for name, info in infos.items()})
    for name, info in infos.items():
        columns = info.table.columns
        info.generated_columns = frozenset(c.name for c in columns if c.computed is not None)
        info.identity_always = frozenset(c.name for c in columns if c.identity is not None and c.identity.always)
        info.sequences = sequences.get(name, {})
        info.triggers = triggers.get(name, [])
        info.maintained_columns = maintained_columns(info.table, info.triggers)


def _is_generated_key(table: sa.Table, pk: tuple[str, ...], dialect: str) -> bool:
    if len(pk) != 1:
        return False
    column = table.columns[pk[0]]
    if not isinstance(column.type, sa.Integer):
        return False
    if dialect == "sqlite":
        return True  # a single integer primary key is SQLite's rowid: the database assigns it
    if column.identity is not None:
        return True
    default = column.server_default
    if default is not None and "nextval" in str(getattr(default, "arg", "")):
        return True
    return column.autoincrement is True


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


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


class ValueRejected(ValueError):
    """A value that the master's column type would reject."""


@functools.lru_cache(maxsize=4096)
def _python_kind(column_type: sa.types.TypeEngine) -> str:
    generic = column_type
    if isinstance(generic, sa.Boolean):
        return "bool"
    if isinstance(generic, sa.Integer):
        return "int"
    if isinstance(generic, sa.Float):
        return "float"
    if isinstance(generic, sa.Numeric):
        return "decimal" if getattr(generic, "asdecimal", True) else "float"
    if isinstance(generic, sa.DateTime):
        return "datetime"
    if isinstance(generic, sa.Date):
        return "date"
    if isinstance(generic, sa.Time):
        return "time"
    if isinstance(generic, sa.Interval):
        return "interval"
    if isinstance(generic, sa.LargeBinary):
        return "bytes"
    if isinstance(generic, sa.JSON):
        return "json"
    if isinstance(generic, sa.Uuid):
        return "uuid"
    if isinstance(generic, sa.String):
        return "str"
    return "other"


def normalize(value: Any, column: sa.Column) -> Any:
    """Bring a value read from SQLite, JSON or the master into the master column's Python form.

    Raises `ValueRejected` for a value the master's type cannot hold (text in an integer column,
    a string longer than the column, an invalid date).
    """
    return normalizer(column)(value)


def normalizer(column: sa.Column) -> Callable[[Any], Any]:
    """`normalize` for one column, with the column's type rules looked up once (cached on the column).

    Every value of a sync passes through here several times; the common case (a value already of the
    column's Python type and within its limits) returns at the first test.
    """
    cached = column.info.get("_normalizer")
    if cached is None:
        cached = column.info["_normalizer"] = _build_normalizer(column)
    return cached


def _build_normalizer(column: sa.Column) -> Callable[[Any], Any]:
    kind = _python_kind(column.type)
    exact_type = _EXACT_TYPES.get(kind)
    length = getattr(column.type, "length", None) if kind == "str" else None
    bits = column.info.get("int_bits", 64)
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1)
    scale = getattr(column.type, "scale", None) if kind == "decimal" else None
    precision = getattr(column.type, "precision", None) if kind == "decimal" else None

    def already_normal(value: Any) -> bool:
        if type(value) is not exact_type:
            return False
        if kind == "int":
            return low <= value < high
        if kind == "str":
            return (length is None or len(value) <= length) and "\x00" not in value
        if kind == "decimal":
            return (
                value.is_finite()
                and (scale is None or value.as_tuple().exponent == -scale)
                and (precision is None or value.adjusted() + 1 <= precision - (scale or 0))
            )
        return True

    def normalize_value(value: Any) -> Any:
        if value is None or already_normal(value):
            return value
        return _normalize_slow(value, column, kind)

    return normalize_value


# The Python type a value of each kind has once normalised (a value of exactly this type skips the rules).
_EXACT_TYPES: dict[str, type] = {
    "int": int,
    "str": str,
    "decimal": decimal.Decimal,
    "date": dt.date,
    "datetime": dt.datetime,
    "float": float,
    "bool": bool,
}


def _normalize_slow(value: Any, column: sa.Column, kind: str) -> Any:
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if value in (0, 1, "0", "1"):
                return bool(int(value))
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ValueRejected(f"{value!r} is not a boolean")
        if kind == "int":
            return _in_integer_range(_as_int(value), column)
        if kind == "decimal":
            if isinstance(value, bool):
                raise ValueRejected(f"{value!r} is not a number")
            number = value if isinstance(value, decimal.Decimal) else decimal.Decimal(str(value))
            if not number.is_finite():
                raise ValueRejected(f"{value!r} is not a finite number")
            scale = getattr(column.type, "scale", None)
            if scale is not None:
                number = number.quantize(decimal.Decimal(1).scaleb(-scale))
            precision = getattr(column.type, "precision", None)
            if precision is not None and number.adjusted() + 1 > precision - (scale or 0):
                raise ValueRejected(f"{value!r} does not fit NUMERIC({precision},{scale or 0})")
            return number
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float, decimal.Decimal, str)):
                raise ValueRejected(f"{value!r} is not a number")
            return float(value)
        if kind == "datetime":
            if isinstance(value, dt.datetime):
                return value
            if isinstance(value, str):
                return dt.datetime.fromisoformat(value)
            raise ValueRejected(f"{value!r} is not a timestamp")
        if kind == "date":
            if isinstance(value, dt.datetime):
                raise ValueRejected(f"{value!r} is a timestamp, not a date")
            if isinstance(value, dt.date):
                return value
            if isinstance(value, str):
                return dt.date.fromisoformat(value)
            raise ValueRejected(f"{value!r} is not a date")
        if kind == "time":
            if isinstance(value, dt.time):
                return value
            if isinstance(value, str):
                return dt.time.fromisoformat(value)
            raise ValueRejected(f"{value!r} is not a time of day")
        if kind == "bytes":
            if isinstance(value, (bytes, bytearray, memoryview)):
                return bytes(value)
            if isinstance(value, str):
                return bytes.fromhex(value)
            raise ValueRejected(f"{value!r} is not binary data")
        if kind == "uuid":
            if isinstance(value, uuid.UUID):
                return value if getattr(column.type, "as_uuid", True) else str(value)
            parsed = uuid.UUID(str(value))
            return parsed if getattr(column.type, "as_uuid", True) else str(parsed)
        if kind == "json":
            if isinstance(value, str):
                try:
                    return json.loads(value)
                except ValueError:
                    return value
            return value
        if kind == "str":
            if isinstance(value, (bytes, bytearray)):
                raise ValueRejected("binary data in a text column")
            text = value if isinstance(value, str) else str(value)
            if "\x00" in text:
                raise ValueRejected("text with a NUL character, which the master cannot store")
            length = getattr(column.type, "length", None)
            if length is not None and len(text) > length:
                raise ValueRejected(f"text of {len(text)} characters is longer than the column's {length}")
            return text
    except ValueRejected:
        raise
    except (ValueError, TypeError, decimal.InvalidOperation) as exc:
        raise ValueRejected(f"{value!r} is not a valid {kind} ({exc})") from None
    return value


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, decimal.Decimal) and value == value.to_integral_value():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value)
    raise ValueRejected(f"{value!r} is not an integer")


def _in_integer_range(number: int, column: sa.Column) -> int:
    bits = column.info.get("int_bits", 64)
    if not -(2 ** (bits - 1)) <= number < 2 ** (bits - 1):
        raise ValueRejected(f"{number} is out of range for a {bits}-bit integer column")
    return number


def normalize_row(row: Mapping[str, Any], table: sa.Table) -> dict[str, Any]:
    columns = table.columns
    return {name: normalizer(columns[name])(value) for name, value in row.items()}


def encode(value: Any) -> Any:
    """A JSON-safe form of a normalised value; `normalize` with the column brings it back."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (dict, list)):
        return value
    return str(value)


def encode_row(row: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return None if row is None else {k: encode(v) for k, v in row.items()}


# One encoder for every call: json.dumps with options builds a new encoder each time, which costs as
# much as the encoding of a small row. Values that JSON lacks (Decimal, dates, bytes) go through `encode`,
# so `dumps(row)` equals `dumps(encode_row(row))`.
_ENCODER = json.JSONEncoder(default=encode, ensure_ascii=False, sort_keys=True)


def dumps(value: Any) -> str:
    return _ENCODER.encode(value)


def decode_row(data: Mapping[str, Any] | None, table: sa.Table) -> dict[str, Any] | None:
    if data is None:
        return None
    columns = table.columns
    return {k: normalizer(columns[k])(v) for k, v in data.items() if k in columns}


def sqlite_column_type(column_type: sa.types.TypeEngine) -> sa.types.TypeEngine:
    """The type a master column gets in the replica (SQLite): the generic form of the master's type."""
    try:
        generic = column_type.as_generic()
    except NotImplementedError:
        return sa.Text()
    if isinstance(generic, (sa.JSON, sa.ARRAY)):
        return sa.Text()
    if isinstance(generic, sa.Enum):
        return sa.String(max((len(v) for v in generic.enums), default=None) or None)
    return generic


# Column types whose values PostgreSQL takes as a typed array parameter without surprises.
_ARRAY_SAFE = (sa.Integer, sa.String, sa.Uuid, sa.Date, sa.DateTime, sa.Numeric)


def one_of(column: sa.Column, values: list[Any], dialect: str) -> sa.ColumnElement[bool]:
    """`column IN (values)`; on PostgreSQL `column = ANY(:array)`: one typed parameter instead of one per
    value, which spares the driver parsing and the server planning a statement hundreds of parameters long
    for every batch of keys.
    """
    if dialect == "postgresql" and isinstance(column.type, _ARRAY_SAFE) and not isinstance(column.type, sa.Enum):
        from sqlalchemy.dialects.postgresql import ARRAY

        return column == sa.any_(sa.bindparam(None, values, type_=ARRAY(column.type)))
    return column.in_(values)


def key_text(table: sa.Table, pk: tuple[str, ...], values: tuple[Any, ...]) -> sa.ColumnElement[str]:
    """SQL that renders a key the way the change-capture triggers render it (CAST(col AS TEXT))."""
    parts: list[sa.ColumnElement[Any]] = []
    for name, value in zip(pk, values, strict=True):
        column_type = table.columns[name].type
        if parts:
            parts.append(sa.literal(KEY_SEPARATOR, sa.Text))
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
