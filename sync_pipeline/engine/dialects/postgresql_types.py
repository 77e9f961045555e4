"""PostgreSQL's column-type rules: which types travel as Python values and which as the database's own
text (`CarriedAsText`), and the canonical text of a value, asked of the database itself."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from sync_pipeline.engine.column_types import (
    CARRIER_INFO,
    CarriedAsText,
    Carrier,
    DialectTypes,
    TextRejected,
    base_type,
    generic_carrier,
)


class PostgreSQLTypes(DialectTypes):
    # Element types psycopg returns as Python lists of the element's own Python values; arrays of any
    # other element (domains, enums, extension types, intervals, json …) are carried as array text.
    _NATIVE_ARRAY_ELEMENTS = ("int", "float", "decimal", "bool", "date", "datetime", "time", "uuid")

    # Values that point at storage outside the row (large objects by OID): a copy of the number is not a
    # copy of what it stands for, and a replica's edit of it could not be loaded faithfully.
    _REFUSED: dict[str, str] = {
        "OID": "a large object reference (OID): the object it points at is not in the row",
    }

    def prepare(self, bind: Engine | Connection, table: sa.Table) -> None:
        for column in table.columns:
            carrier = self.carrier(column)
            if carrier.kind == "text" and not isinstance(column.type, CarriedAsText):
                column.type = CarriedAsText(column.type)
            column.info[CARRIER_INFO] = carrier

    CANONICAL_CHUNK = 500

    def canonical_texts(self, conn: Connection, column: sa.Column[Any], values: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for start in range(0, len(values), self.CANONICAL_CHUNK):
            chunk = values[start : start + self.CANONICAL_CHUNK]
            try:
                with conn.begin_nested():
                    out.update(self._canonical_chunk(conn, column, chunk))
            except sa.exc.DBAPIError:
                for value in chunk:  # find the value at fault, to name it
                    try:
                        with conn.begin_nested():
                            out.update(self._canonical_chunk(conn, column, [value]))
                    except sa.exc.DBAPIError as exc:
                        reason = str(getattr(exc, "orig", exc)).strip().splitlines()[0]
                        raise TextRejected(value, reason) from None
        return out

    @staticmethod
    def _canonical_chunk(conn: Connection, column: sa.Column[Any], chunk: list[str]) -> dict[str, str]:
        # UNION ALL gives each untyped parameter the type of the column in the first (empty) branch, so
        # the database parses it with the column's own input function, no type name written into SQL.
        raw = sa.type_coerce(column, sa.types.NullType())  # the column itself, not its text
        branches = [sa.select(sa.literal(-1).label("i"), raw.label("v")).where(sa.false())]
        branches += [
            sa.select(sa.literal(i).label("i"), sa.bindparam(f"v{i}", value, type_=sa.types.NullType()).label("v"))
            for i, value in enumerate(chunk)
        ]
        values = sa.union_all(*branches).subquery()
        rows = conn.execute(sa.select(values.c.i, sa.cast(values.c.v, sa.Text)))
        return {chunk[i]: text for i, text in rows}

    def carrier(self, column: sa.Column[Any]) -> Carrier:
        if isinstance(column.type, CarriedAsText):
            return Carrier("text")
        base = base_type(column.type)
        refused = self._REFUSED.get(type(base).__name__)
        if refused is not None:
            return Carrier("other", refused=refused)
        native = self._native(base)
        if native is not None:
            return native
        if isinstance(base, sa.ARRAY):
            element = base_type(base.item_type)
            if type(element).__name__ in self._REFUSED:
                return Carrier("other", refused="an array of " + self._REFUSED[type(element).__name__])
            native_element = self._native(element) if element is base.item_type else None
            if native_element is not None and (
                native_element.kind in self._NATIVE_ARRAY_ELEMENTS
                or (native_element.kind == "str" and type(element) in (sa.TEXT, sa.VARCHAR))
            ):
                return Carrier("array", element=native_element)
        # Everything else the database writes and reads back exactly as its text.
        return Carrier("text")

    def _native(self, base: sa.types.TypeEngine[Any]) -> Carrier | None:
        from sqlalchemy.dialects import postgresql as pg

        if isinstance(base, (pg.INTERVAL, sa.JSON)):
            return None  # interval months and jsonb numbers lose precision as Python values
        if isinstance(base, pg.CITEXT):
            return Carrier("str")
        if isinstance(base, sa.CHAR) and base.length:
            return Carrier("str", length=base.length, blank_padded=True, cuts_excess_spaces=True)
        carrier = generic_carrier(base, int_bits=_pg_int_bits(base))
        digits = getattr(base, "precision", None)
        digits = digits if isinstance(digits, int) and 0 <= digits < 6 else None
        if carrier.kind == "datetime":
            return Carrier("datetime", zoned=bool(getattr(base, "timezone", False)), second_digits=digits)
        if carrier.kind == "time":
            return Carrier("time", second_digits=digits)
        if carrier.kind == "str" and carrier.length:
            return Carrier("str", length=carrier.length, cuts_excess_spaces=True)
        return None if carrier.kind in ("other", "interval", "json") else carrier


def _pg_int_bits(column_type: sa.types.TypeEngine[Any]) -> int:
    if isinstance(column_type, sa.SmallInteger):
        return 16
    if isinstance(column_type, sa.BigInteger):
        return 64
    return 32
