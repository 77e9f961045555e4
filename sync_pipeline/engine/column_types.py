"""How each master column's values are carried: master -> replica -> change log -> master.

Every reflected column gets a `Carrier`: the kind of Python value its values are compared and written
as, with the limits of its *base* type (a domain counts as the type under it). Database-specific rules
live in one `DialectTypes` per database (`DialectImpl.types`, in `dialects/`), not as branches elsewhere.

Two ways of carrying a value:
- natively: the driver's Python value (int, Decimal, datetime, bytes, list of scalars …), normalised
  in Python so that a value read from the replica's JSON compares equal to the one read from the master;
- as the database's own text (`CarriedAsText`): types whose Python form would lose something (interval
  months, jsonb number precision, geometric types, ranges, tsvector, inet, arrays of named types …)
  are read as `CAST(column AS TEXT)` and written as that text, which the type's input accepts back.
  The database's text output is canonical, so a base value and the master's value compare as text.

A type the product cannot carry faithfully is refused at `init-master` (`refuse_uncarried_columns`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine.dialects import impl_for
from sync_pipeline.engine.errors import BadInputError

CARRIER_INFO = "carrier"  # key in Column.info


@dataclass(frozen=True)
class Carrier:
    """The value rules of one column (or of an array's elements)."""

    kind: str  # bool int float decimal datetime date time bytes json uuid str enum text array other
    int_bits: int = 64
    length: int | None = None
    blank_padded: bool = False  # CHAR(n) on PostgreSQL: the master pads to n characters
    precision: int | None = None
    scale: int | None = None
    enums: tuple[str, ...] | None = None
    element: Carrier | None = None  # arrays
    as_uuid: bool = True
    # datetime: True holds instants (timestamptz), False wall-clock times, None whatever it is given
    # (SQLite). A value of the other sort is made this sort in UTC, so what is written compares equal to
    # what the master reads back.
    zoned: bool | None = None
    lenient_text: bool = False  # SQLite temporal: text that does not parse is kept as text, not refused
    refused: str | None = None  # why the product cannot carry this type (init-master refuses it)
    # datetime, time: the digits of a second the master keeps (timestamp(0), time(3)); None for all six.
    # A local value is rounded as the master rounds it, so what detection and the load see is what it stores.
    second_digits: int | None = None
    # str: the master cuts spaces beyond the length (PostgreSQL varchar(n)/char(n)) rather than refusing.
    cuts_excess_spaces: bool = False


class CarriedAsText(sa.types.TypeDecorator[Any]):
    """A column read as the database's text form of its value and written as that text.

    The bind parameter carries no type (NullType), so the database reads the text with the column's
    own input function (psycopg sends `str` untyped)."""

    impl = sa.types.NullType
    cache_ok = True

    def __init__(self, original: sa.types.TypeEngine[Any]) -> None:
        super().__init__()
        self.original = original

    def column_expression(self, colexpr: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        return sa.cast(colexpr, sa.Text)

    def as_generic(self, allow_nulltype: bool = False) -> sa.types.TypeEngine[Any]:
        raise NotImplementedError  # no generic type holds it: its text is what travels

    def __repr__(self) -> str:
        return f"CarriedAsText({self.original!r})"


# ---------------------------------------------------------------------------------------------
# SQLite temporal text
# ---------------------------------------------------------------------------------------------

_TEMPORAL_TEXT = re.compile(
    r"^(?P<date>\d{4}-\d{2}-\d{2})?(?P<sep>[ T])?"
    r"(?P<time>\d{2}:\d{2}(?P<seconds>:\d{2}(?:\.(?P<fraction>\d+))?)?)?(?P<zone>Z|[+-]\d{2}:?\d{2})?$"
)


@dataclass(frozen=True)
class TextFormat:
    """How one SQLite column writes dates and times as text, learnt from a value it holds."""

    separator: str | None = " "  # between date and time; None: the column holds dates only
    seconds: bool = True
    fraction_digits: int = 0
    zone_z: bool = False  # UTC written as 'Z' rather than '+00:00'
    midnight_suffix: str | None = None  # DATE columns that hold '2003-10-17 00:00:00'

    @classmethod
    def from_sample(cls, sample: str | None) -> TextFormat:
        match = _TEMPORAL_TEXT.match(sample.strip()) if sample else None
        if match is None:
            return cls()
        date, time = match["date"], match["time"]
        if date and not time:
            return cls(separator=None)
        return cls(
            separator=match["sep"] or " ",
            seconds=bool(match["seconds"]),
            fraction_digits=len(match["fraction"] or ""),
            zone_z=match["zone"] == "Z",
        )

    def time_text(self, value: dt.time | dt.datetime) -> str:
        text = f"{value.hour:02d}:{value.minute:02d}"
        if self.seconds or value.second or value.microsecond:
            text += f":{value.second:02d}"
        digits = self.fraction_digits
        if value.microsecond and (digits == 0 or value.microsecond % 10 ** (6 - digits)):
            digits = 6  # the value is finer than the column's format: never drop precision
        if digits:
            text += "." + f"{value.microsecond:06d}"[:digits]
        offset = value.utcoffset()
        if offset is not None:
            if offset == dt.timedelta(0) and self.zone_z:
                text += "Z"
            else:
                minutes = int(offset.total_seconds() // 60)
                sign = "-" if minutes < 0 else "+"
                text += f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
        return text

    def render(self, value: Any) -> Any:
        if isinstance(value, dt.datetime):
            midnight = value.time() == dt.time(0) and value.utcoffset() is None
            if self.separator is None and midnight:
                return value.date().isoformat()
            return f"{value.date().isoformat()}{self.separator or ' '}{self.time_text(value)}"
        if isinstance(value, dt.date):
            return value.isoformat() + (self.midnight_suffix or "")
        if isinstance(value, dt.time):
            return self.time_text(value)
        return value


def parse_temporal(value: Any, kind: str) -> Any:
    """A SQLite text value as a date, datetime or time; text that is none of these stays as it is."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    try:
        if kind == "date":
            if len(text) > 10 and _TEMPORAL_TEXT.match(text):
                moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
                return moment.date() if moment.time() == dt.time(0) and moment.tzinfo is None else value
            return dt.date.fromisoformat(text)
        if kind == "time":
            return dt.time.fromisoformat(text.replace("Z", "+00:00"))
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return value


class SQLiteStoredTemporal(sa.types.TypeDecorator[Any]):
    """A SQLite DATETIME/DATE/TIME column: values read as Python dates from whatever text the rows hold,
    and written back in the text format the column already uses (other applications compare and sort
    those strings), not in SQLAlchemy's own '…04:05:06.000000'."""

    impl = sa.types.NullType
    cache_ok = True

    def __init__(self, original: sa.types.TypeEngine[Any], kind: str, text_format: TextFormat) -> None:
        super().__init__()
        self.original, self.kind, self.text_format = original, kind, text_format

    def process_bind_param(self, value: Any, dialect: sa.Dialect) -> Any:
        return self.text_format.render(value)

    def process_result_value(self, value: Any, dialect: sa.Dialect) -> Any:
        return parse_temporal(value, self.kind)

    def as_generic(self, allow_nulltype: bool = False) -> sa.types.TypeEngine[Any]:
        return self.original.as_generic(allow_nulltype)

    def __repr__(self) -> str:
        return repr(self.original)


# ---------------------------------------------------------------------------------------------
# Per dialect
# ---------------------------------------------------------------------------------------------


# Generic types whose carrier needs no parameter, in the order they are tested.
_PLAIN_KINDS: tuple[tuple[type[sa.types.TypeEngine[Any]], str], ...] = (
    (sa.DateTime, "datetime"),
    (sa.Date, "date"),
    (sa.Time, "time"),
    (sa.Interval, "interval"),
    (sa.LargeBinary, "bytes"),
    (sa.JSON, "json"),
)


def generic_carrier(column_type: sa.types.TypeEngine[Any], int_bits: int = 64) -> Carrier:
    """Rules that hold on every database, by SQLAlchemy's generic type classes."""
    t = column_type
    if isinstance(t, SQLiteStoredTemporal):
        return Carrier(t.kind, lenient_text=True)
    if isinstance(t, CarriedAsText):
        return Carrier("text")
    if isinstance(t, sa.Boolean):
        return Carrier("bool")
    if isinstance(t, sa.Integer):
        return Carrier("int", int_bits=int_bits)
    if isinstance(t, sa.Float):
        return Carrier("float")
    if isinstance(t, sa.Numeric):
        if not getattr(t, "asdecimal", True):
            return Carrier("float")
        return Carrier("decimal", precision=t.precision, scale=t.scale)
    for generic, kind in _PLAIN_KINDS:
        if isinstance(t, generic):
            return Carrier(kind)
    if isinstance(t, sa.Uuid):
        return Carrier("uuid", as_uuid=getattr(t, "as_uuid", True))
    if isinstance(t, sa.Enum) and t.enums:
        return Carrier("enum", length=getattr(t, "length", None), enums=tuple(t.enums))
    if isinstance(t, sa.String):
        return Carrier("str", length=getattr(t, "length", None))
    return Carrier("other")


class DialectTypes:
    """The column-type rules of one master dialect; the base class holds the generic ones."""

    def prepare(self, bind: Engine | Connection, table: sa.Table) -> None:
        """Give every column of a reflected table its carrier (and, where needed, the type it is read
        and written through)."""
        for column in table.columns:
            column.info[CARRIER_INFO] = self.carrier(column)

    def carrier(self, column: sa.Column[Any]) -> Carrier:
        return generic_carrier(column.type)

    def canonical_texts(self, conn: Connection, column: sa.Column[Any], values: list[str]) -> dict[str, str]:
        """For a column carried as text: each value as the master writes it back (its type's output of its
        input). Raises `TextRejected` for a value the column's type does not accept. Dialects without
        text-carried columns have nothing to do."""
        return {value: value for value in values}


class TextRejected(ValueError):
    """A value a text-carried column's type does not accept (the database's reason in the message)."""

    def __init__(self, value: str, reason: str) -> None:
        super().__init__(f"{value!r}: {reason}")
        self.value, self.reason = value, reason


def base_type(column_type: sa.types.TypeEngine[Any]) -> sa.types.TypeEngine[Any]:
    """The type under any (nested) domains."""
    seen = 0
    while hasattr(column_type, "data_type") and seen < 32:
        column_type = column_type.data_type
        seen += 1
    return column_type


def prepare_table(bind: Engine | Connection, table: sa.Table) -> None:
    """Give every column its carrier by the master database's rules (`DialectImpl.types`)."""
    impl_for(bind).types.prepare(bind, table)


def carrier_of(column: sa.Column[Any]) -> Carrier:
    """The column's carrier; columns that were not reflected (sync tables, tests) get the generic rules."""
    carrier = column.info.get(CARRIER_INFO)
    if carrier is None:
        carrier = column.info[CARRIER_INFO] = generic_carrier(column.type, column.info.get("int_bits", 64))
    return carrier


def replica_type(column: sa.Column[Any]) -> sa.types.TypeEngine[Any]:
    """The type a master column gets in the replica (SQLite)."""
    carrier = carrier_of(column)
    if carrier.kind in ("text", "array", "json", "other"):
        return sa.Text()
    if carrier.kind == "enum":
        return sa.String(max((len(v) for v in carrier.enums or ()), default=None) or None)
    column_type = column.type
    if isinstance(column_type, SQLiteStoredTemporal):
        column_type = column_type.original
    try:
        generic = base_type(column_type).as_generic()
    except NotImplementedError:
        return sa.Text()
    if isinstance(generic, (sa.JSON, sa.ARRAY)):
        return sa.Text()
    if isinstance(generic, sa.String) and generic.collation:
        # A master collation ('default' of a domain, 'de_DE') means nothing to SQLite.
        return type(generic)(generic.length)
    return generic


def type_text(column: sa.Column[Any], dialect: sa.Dialect | None = None) -> str:
    """The column's type as the master's DDL names it (for messages and hints)."""
    column_type = column.type
    if isinstance(column_type, (CarriedAsText, SQLiteStoredTemporal)):
        column_type = column_type.original
    if isinstance(column_type, sa.types.NullType):
        return "unknown type"
    try:
        text = str(column_type.compile(dialect=dialect))
        base = base_type(column_type)
        return text if base is column_type else f"{text}, a domain over {base.compile(dialect=dialect)}"
    except Exception:  # noqa: BLE001 - a type the dialect cannot print (an unknown one) is named by its class
        return "unknown type" if isinstance(column_type, sa.types.NullType) else type(column_type).__name__.upper()


def refuse_uncarried_columns(tables: Iterable[sa.Table], dialect: sa.Dialect | None = None) -> None:
    """BadInputError naming every column whose type the product cannot carry faithfully."""
    refused = [
        f"{table.name}.{column.name} ({type_text(column, dialect)}; {carrier.refused})"
        for table in tables
        for column in table.columns
        if (carrier := carrier_of(column)).refused
    ]
    if refused:
        raise BadInputError(
            "column type(s) that a replica cannot carry faithfully: " + "; ".join(refused),
            "leave these tables out of the modules, or change the column to a type that holds the value "
            "itself (e.g. bytea instead of a large object OID); see README 'Column types'",
        )
