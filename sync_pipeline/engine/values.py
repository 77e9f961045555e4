"""The value rules that make a value read from SQLite (the replica), JSON (the change log) or the master
comparable: normalising to the master column's Python form, validating against its type's limits,
encoding to JSON and back. Each column's rules come from its carrier (`column_types`)."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
import uuid
from collections.abc import Callable, Mapping
from json.encoder import c_make_encoder, encode_basestring, encode_basestring_ascii  # type: ignore[attr-defined]
from typing import Any

import sqlalchemy as sa

from sync_pipeline.engine.column_types import Carrier, carrier_of, parse_temporal


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
        if kind in ("date", "time"):
            python_type, what = (dt.date, "a date") if kind == "date" else (dt.time, "a time of day")
            if kind == "date" and isinstance(value, dt.datetime):
                raise ValueRejected(f"{value!r} is a timestamp, not a date")
            if isinstance(value, python_type):
                return value
            if isinstance(value, str):
                return python_type.fromisoformat(value)
            raise ValueRejected(f"{value!r} is not {what}")
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


# One encoder for every call: json.dumps and JSONEncoder.encode build a new C encoder each time, which
# costs as much as the encoding of a small row, and a sync encodes several values per change. Built once
# here with the options of `json.JSONEncoder(default=encode, ensure_ascii=False, sort_keys=True)` (and of
# plain `json.dumps` for `dumps_plain`), so the text is the same; only the check for reference cycles is
# left out, which values read from a database never have. Values that JSON lacks (Decimal, dates, bytes)
# go through `encode`, so `dumps(row)` equals `dumps(encode_row(row))`.
_ENCODER = json.JSONEncoder(default=encode, ensure_ascii=False, sort_keys=True)
_PLAIN_ENCODER = json.JSONEncoder()


def _no_default(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


if c_make_encoder is not None:
    _encode_row = c_make_encoder(None, encode, encode_basestring, None, ": ", ", ", True, False, True)
    _encode_plain = c_make_encoder(None, _no_default, encode_basestring_ascii, None, ": ", ", ", False, False, True)

    def dumps(value: Any) -> str:
        return "".join(_encode_row(value, 0))

    def dumps_plain(value: Any) -> str:
        """`json.dumps(value)`: for the lists of column names and the dicts of change times."""
        return "".join(_encode_plain(value, 0))

else:  # pragma: no cover - an interpreter without json's C speedups

    def dumps(value: Any) -> str:
        return _ENCODER.encode(value)

    def dumps_plain(value: Any) -> str:
        return _PLAIN_ENCODER.encode(value)


def decode_row(data: Mapping[str, Any] | None, table: sa.Table) -> dict[str, Any] | None:
    if data is None:
        return None
    columns = table.columns
    return {k: normalizer(columns[k])(v) for k, v in data.items() if k in columns}
