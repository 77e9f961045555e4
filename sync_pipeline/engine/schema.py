"""Reflection of the master's tables: keys, generated keys, foreign keys, FK order, and the value
rules (normalising, encoding to JSON, validating) that make a value read from SQLite comparable to
the same value read from the master.

What differs between databases (generated keys, partitions, sequences, triggers) is asked of the
master's `DialectImpl` (`dialects/`).
"""

from __future__ import annotations

import datetime as dt
import decimal
import functools
import json
import re
import uuid
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine.column_types import (
    CarriedAsText,
    Carrier,
    base_type,
    carrier_of,
    parse_temporal,
    prepare_table,
)
from sync_pipeline.engine.dialects import DialectImpl, impl_for
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


# ---------------------------------------------------------------------------------------------
# Values
# ---------------------------------------------------------------------------------------------


class ValueRejected(ValueError):
    """A value that the master's column type would reject."""


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
        cached = column.info["_normalizer"] = carrier_normalizer(carrier_of(column))
    return cached


def carrier_normalizer(carrier: Carrier) -> Callable[[Any], Any]:
    """The normaliser of one carrier (a column's type rules, by its base type; see column_types)."""
    kind = carrier.kind
    if kind == "array":
        assert carrier.element is not None
        return _array_normalizer(carrier_normalizer(carrier.element))
    exact_type = _EXACT_TYPES.get(kind)
    length = carrier.length if kind in ("str", "enum") else None
    padded = carrier.blank_padded
    low, high = -(2 ** (carrier.int_bits - 1)), 2 ** (carrier.int_bits - 1)
    scale, precision = carrier.scale, carrier.precision
    enums = frozenset(carrier.enums or ())
    zoned = carrier.zoned if kind == "datetime" else None
    digits = carrier.second_digits if kind in ("datetime", "time") else None
    step = 10 ** (6 - digits) if digits is not None else 1

    def already_normal(value: Any) -> bool:
        if type(value) is not exact_type:
            return False
        if kind == "int":
            return low <= value < high
        if kind == "str":
            return (
                length is None or len(value) == length or (not padded and len(value) < length)
            ) and "\x00" not in value
        if kind == "enum":
            return value in enums
        if kind == "decimal":
            return (
                value.is_finite()
                and (scale is None or value.as_tuple().exponent == -scale)
                and (precision is None or value.adjusted() + 1 <= precision - (scale or 0))
            )
        if kind == "text":
            return "\x00" not in value
        if step > 1 and value.microsecond % step:  # datetime, time: more digits of a second than the master keeps
            return False
        if zoned is not None:  # datetime
            return (value.tzinfo is not None) == zoned
        return True

    def normalize_value(value: Any) -> Any:
        if value is None or already_normal(value):
            return value
        normal = _normalize_slow(value, carrier)
        return _rounded_seconds(normal, step) if step > 1 else normal

    return normalize_value


# PostgreSQL rounds timestamps in microseconds from this instant, halves away from it (AdjustTimestampForTypmod).
_PG_EPOCH = dt.datetime(2000, 1, 1)
_PG_EPOCH_UTC = _PG_EPOCH.replace(tzinfo=dt.UTC)


def _rounded_seconds(value: Any, step: int) -> Any:
    """A timestamp or time rounded to `step` microseconds exactly as PostgreSQL's timestamp(p)/time(p)
    input rounds it, so a local value compares equal to the one the master will hold."""
    if isinstance(value, dt.datetime):
        epoch = _PG_EPOCH if value.tzinfo is None else _PG_EPOCH_UTC
        micros = (value - epoch) // dt.timedelta(microseconds=1)
        half = step // 2
        rounded = (micros + half) // step * step if micros >= 0 else -((-micros + half) // step * step)
        out = epoch + dt.timedelta(microseconds=rounded)
        return out if value.tzinfo is None else out.astimezone(value.tzinfo)
    if isinstance(value, dt.time) and value.tzinfo is None:
        micros = ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond
        rounded = (micros + step // 2) // step * step
        if rounded >= 86_400 * 1_000_000:
            # PostgreSQL stores 24:00:00, which no Python time holds: refused rather than stored otherwise.
            raise ValueRejected(f"{value!r} rounds to 24:00:00 in the master's column")
        seconds, micro = divmod(rounded, 1_000_000)
        return dt.time(seconds // 3600, seconds // 60 % 60, seconds % 60, micro)
    return value


def _array_normalizer(element: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Arrays travel as JSON lists (nested for more dimensions); each element by the element's rules."""

    def each(items: list[Any]) -> list[Any]:
        return [each(item) if isinstance(item, list) else element(item) for item in items]

    def normalize_array(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ValueRejected(f"{value!r} is not an array (a JSON list)") from None
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise ValueRejected(f"{value!r} is not an array (a JSON list)")
        return each(value)

    return normalize_array


_DATE_LIKE = re.compile(r"^\s*\d{4}-\d{1,2}-\d{1,2}|^\s*\d{1,2}:\d{2}")

# The Python type a value of each kind has once normalised (a value of exactly this type skips the rules).
_EXACT_TYPES: dict[str, type] = {
    "int": int,
    "str": str,
    "enum": str,
    "text": str,
    "decimal": decimal.Decimal,
    "date": dt.date,
    "datetime": dt.datetime,
    "float": float,
    "bool": bool,
}


def _normalize_slow(value: Any, carrier: Carrier) -> Any:
    kind = carrier.kind
    try:
        if carrier.lenient_text and isinstance(value, (str, int, float)) and not isinstance(value, bool):
            # SQLite dates and times: text that is no date at all ('n/a') or a number stays as the row
            # holds it; an impossible date ('2026-02-30') is refused like on any other master.
            parsed = parse_temporal(value, kind)
            if isinstance(parsed, str) and _DATE_LIKE.match(parsed):
                raise ValueRejected(f"{value!r} is not a valid {kind}")
            return parsed
        if kind == "bool":
            if isinstance(value, bool):
                return value
            if value in (0, 1, "0", "1"):
                return bool(int(value))
            if isinstance(value, str) and value.lower() in ("true", "false"):
                return value.lower() == "true"
            raise ValueRejected(f"{value!r} is not a boolean")
        if kind == "int":
            return _in_integer_range(_as_int(value), carrier.int_bits)
        if kind == "decimal":
            if isinstance(value, bool):
                raise ValueRejected(f"{value!r} is not a number")
            number = value if isinstance(value, decimal.Decimal) else decimal.Decimal(str(value))
            if not number.is_finite():
                raise ValueRejected(f"{value!r} is not a finite number")
            scale, precision = carrier.scale, carrier.precision
            if scale is not None:
                # Halves away from zero, as the master's NUMERIC(p,s) rounds (not Python's half-even).
                number = number.quantize(decimal.Decimal(1).scaleb(-scale), rounding=decimal.ROUND_HALF_UP)
            if precision is not None and number.adjusted() + 1 > precision - (scale or 0):
                raise ValueRejected(f"{value!r} does not fit NUMERIC({precision},{scale or 0})")
            return number
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float, decimal.Decimal, str)):
                raise ValueRejected(f"{value!r} is not a number")
            return float(value)
        if kind == "datetime":
            if isinstance(value, str):
                value = dt.datetime.fromisoformat(value)
            if not isinstance(value, dt.datetime):
                raise ValueRejected(f"{value!r} is not a timestamp")
            if carrier.zoned is None or (value.tzinfo is not None) == carrier.zoned:
                return value
            # A local time for an instant column, or an instant for a local-time column: taken as UTC.
            return value.replace(tzinfo=dt.UTC) if carrier.zoned else value.astimezone(dt.UTC).replace(tzinfo=None)
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
                return value if carrier.as_uuid else str(value)
            parsed = uuid.UUID(str(value))
            return parsed if carrier.as_uuid else str(parsed)
        if kind == "json":
            if isinstance(value, str):
                try:
                    return json.loads(value)
                except ValueError:
                    return value
            return value
        if kind in ("str", "enum", "text"):
            if isinstance(value, (bytes, bytearray, memoryview)):
                raise ValueRejected("binary data in a text column")
            if isinstance(value, float) and kind == "text":
                # SQLite hands back a number typed into a text-carried column (an interval '5', a
                # money 12.5) as REAL: its shortest exact text, as the user wrote it.
                text = repr(value)
            else:
                text = value if isinstance(value, str) else str(value)
            if "\x00" in text:
                raise ValueRejected("text with a NUL character, which the master cannot store")
            if kind == "enum" and text not in (carrier.enums or ()):
                raise ValueRejected(f"{text!r} is not one of the type's values: {', '.join(carrier.enums or ())}")
            length = carrier.length if kind == "str" else None
            cut = length is not None and carrier.cuts_excess_spaces and not text[length:].strip(" ")
            if cut and length is not None and len(text) > length:
                text = text[:length]  # varchar(n) 'ab  ' -> 'ab': the master cuts spaces past the length
            if length is not None and len(text) > length:
                raise ValueRejected(f"text of {len(text)} characters is longer than the column's {length}")
            if length is not None and carrier.blank_padded:
                text = text.ljust(length)  # CHAR(n): the master stores it padded to n
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


def _in_integer_range(number: int, bits: int) -> int:
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
    if isinstance(value, list):
        return [encode(item) for item in value]  # arrays: their elements may be Decimals, dates …
    if isinstance(value, dict):
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
