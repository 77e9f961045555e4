"""MySQL's and MariaDB's column-type rules (`MySQLImpl.types`): how each type's values travel.

- TINYINT(1) is a boolean; unsigned integers hold one bit more of positive range.
- DATETIME(n) keeps n digits of a second; SET values travel as their text ('a,b'); binary strings as bytes.
- TIME is a duration (-838:59:59 to 838:59:59), not a time of day: it travels as the server's own text
  ('25:00:00.000'), which its input reads back; a local value is made canonical by the server
  (`canonical_texts`), so '8:30' and '08:30:00' compare equal.
- BIT(n) is read as its number (`col + 0`): the driver's bytes would not fit the replica's JSON log.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine.column_types import (
    CARRIER_INFO,
    CarriedAsText,
    Carrier,
    DialectTypes,
    TextRejected,
    generic_carrier,
)
from sync_pipeline.engine.dialects import mysql_collation
from sync_pipeline.engine.dialects.base import catalog_connection

CANONICAL_CHUNK = 200  # values made canonical per select

# Integer widths in bits (an unsigned column holds one bit more of positive range).
_INT_BITS = {mysql.TINYINT: 8, mysql.SMALLINT: 16, mysql.MEDIUMINT: 24, mysql.INTEGER: 32, mysql.BIGINT: 64}


class BitAsNumber(sa.types.TypeDecorator[int]):
    """A BIT(n) column read as its unsigned number and written as one (MySQL reads a number into BIT)."""

    impl = sa.types.BigInteger
    cache_ok = True

    def __init__(self, length: int | None = None) -> None:
        super().__init__()
        self.length = length or 1

    def column_expression(self, colexpr: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
        return sa.type_coerce(sa.type_coerce(colexpr, sa.types.NullType()) + 0, self)

    def as_generic(self, allow_nulltype: bool = False) -> sa.types.TypeEngine[Any]:
        return sa.BigInteger()


_DEFAULTS = sa.text(
    "SELECT COLUMN_NAME, COLUMN_DEFAULT FROM information_schema.COLUMNS "
    "WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = :t AND IS_NULLABLE = 'NO' AND COLUMN_DEFAULT IS NOT NULL"
)


def _read_unreflected_defaults(bind: Engine | Connection, table: sa.Table) -> None:
    """SQLAlchemy's reflection drops some defaults (a BIT's b'1'): a NOT NULL column the master fills must
    still be known as one, or a local insert could not leave it to the master (`filled_by_default`)."""
    if all(c.nullable or c.server_default is not None for c in table.columns):
        return
    with catalog_connection(bind) as conn:
        for name, default in conn.execute(_DEFAULTS, {"t": table.name}):
            column = table.columns.get(name)
            if column is not None and column.server_default is None:
                column.server_default = sa.DefaultClause(str(default))  # what it is matters not, only that it is


class MySQLTypes(DialectTypes):
    """MySQL's types (see the module's rules)."""

    def prepare(self, bind: Engine | Connection, table: sa.Table) -> None:
        mysql_collation.read_collations(bind, table)  # natural keys compare by the column's collation
        _read_unreflected_defaults(bind, table)
        for column in table.columns:
            t = column.type
            if isinstance(t, mysql.TINYINT) and t.display_width == 1:
                column.type = sa.Boolean(create_constraint=False)
            elif isinstance(t, mysql.SET):
                # Its text holds any combination of its members: as long as all of them, comma-separated.
                column.type = sa.String(len(",".join(t.values)) or None)
            elif isinstance(t, sa.Time):
                column.type = CarriedAsText(t)
            elif isinstance(t, mysql.BIT):
                column.type = BitAsNumber(t.length)
            column.info[CARRIER_INFO] = self.carrier(column)

    def carrier(self, column: sa.Column[Any]) -> Carrier:
        t = column.type
        if isinstance(t, CarriedAsText):
            return Carrier("text")
        if isinstance(t, BitAsNumber):
            return Carrier("int", int_bits=t.length + 1)  # unsigned: n bits of positive range
        for cls, bits in _INT_BITS.items():
            if isinstance(t, cls):
                return Carrier("int", int_bits=bits + (1 if getattr(t, "unsigned", False) else 0))
        if isinstance(t, mysql.YEAR):
            return Carrier("int", int_bits=16)
        if isinstance(t, sa.DateTime):
            return Carrier("datetime", zoned=False, second_digits=getattr(t, "fsp", None) or 0)
        if isinstance(t, sa.types._Binary):
            return Carrier("bytes")
        if isinstance(t, sa.String) and not isinstance(t, sa.Enum):
            # MySQL cuts spaces beyond a VARCHAR's length (a note, not an error, even in strict mode).
            return Carrier("str", length=getattr(t, "length", None), cuts_excess_spaces=True)
        return generic_carrier(t)

    def canonical_texts(self, conn: Connection, column: sa.Column[Any], values: list[str]) -> dict[str, str]:
        """Each value as the server writes it back: CAST to the column's type and back to text. MySQL
        answers NULL (with a warning, not an error) for text its type does not read."""
        original = column.type.original if isinstance(column.type, CarriedAsText) else column.type
        distinct = list(dict.fromkeys(values))
        out: dict[str, str] = {}
        for start in range(0, len(distinct), CANONICAL_CHUNK):  # one select of many casts per chunk
            chunk = distinct[start : start + CANONICAL_CHUNK]
            casts = [sa.cast(sa.cast(sa.literal(v, sa.String), original), sa.String) for v in chunk]
            for value, text in zip(chunk, conn.execute(sa.select(*casts)).one(), strict=True):
                if text is None:
                    raise TextRejected(value, f"not a valid {original.compile(dialect=conn.dialect)}")
                out[value] = text
        return out
