"""What only the review page needs besides the engine's views (`engine.queries`) and rules of
deciding (`engine.resolve`): each column's declared type, shown next to a typed value's input.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from sync_pipeline.engine.column_types import type_text
from sync_pipeline.engine.schema import reflect_tables


@dataclass
class ColumnHint:
    type: str
    nullable: bool

    def text(self) -> str:
        return f"{self.type}{'' if self.nullable else ', required'}"


def column_hints(engine: Engine, table: str) -> dict[str, ColumnHint]:
    """Each column's type as the master declares it: shown next to a typed value's input."""
    info = reflect_tables(engine, [table])[table]
    hints = {}
    for column in info.table.columns:
        hints[column.name] = ColumnHint(type_text(column, engine.dialect), bool(column.nullable))
    return hints
