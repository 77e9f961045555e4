"""The master database's behaviour, one module per database (the layout of alembic's `ddl/`).

`impl_for(bind)` returns the `DialectImpl` of a connection's, engine's or URL's database, chosen by
SQLAlchemy's dialect name; an unsupported database is bad input with the list of supported ones.
"""

from __future__ import annotations

import importlib
from functools import cache
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine

from sync_pipeline.engine.dialects.base import _REGISTRY, DialectImpl
from sync_pipeline.engine.errors import BadInputError

# SQLAlchemy dialect name -> the module whose DialectImpl subclass registers it (imported on first use).
MODULES: dict[str, str] = {
    "sqlite": "sync_pipeline.engine.dialects.sqlite",
    "postgresql": "sync_pipeline.engine.dialects.postgresql",
    "mysql": "sync_pipeline.engine.dialects.mysql",
    "mariadb": "sync_pipeline.engine.dialects.mysql",
}


# URL schemes SQLAlchemy does not know by that name.
ALIASES = {"postgres": "postgresql"}


class UnsupportedDatabase(BadInputError):
    """A master on a database the product has no dialect module for."""


Bind = Connection | Engine | sa.Dialect | URL | str


def dialect_name(bind: Bind) -> str:
    if isinstance(bind, str):
        return bind
    if isinstance(bind, URL):
        name = bind.get_backend_name()
        return ALIASES.get(name, name)
    if isinstance(bind, sa.Dialect):
        return bind.name
    return bind.dialect.name


def impl_for(bind: Bind) -> DialectImpl:
    """The behaviour of the database behind `bind` (a connection, engine, dialect, URL or dialect name)."""
    return _impl(dialect_name(bind))


@cache
def _impl(name: str) -> DialectImpl:
    if name not in _REGISTRY and name in MODULES:
        try:
            importlib.import_module(MODULES[name])
        except ModuleNotFoundError as exc:
            if exc.name != MODULES[name]:
                raise
    cls = _REGISTRY.get(name)
    if cls is None:
        supported = sorted(n for n in MODULES if _available(n))
        raise UnsupportedDatabase(
            f"the master database {name!r} is not supported",
            "use a master on one of: " + ", ".join(supported),
        )
    return cls()


def _available(name: str) -> bool:
    try:
        importlib.import_module(MODULES[name])
    except ModuleNotFoundError:
        return False
    return True


def driver_transient_kind(error: BaseException) -> str | None:
    """What a driver error that carries no SQLSTATE says about a transient abort ('deadlock' …), asked of
    every database module in use (a retry knows the error, not the master it came from)."""
    for cls in list(_REGISTRY.values()):
        kind = cls.transient_error(error)
        if kind is not None:
            return kind
    return None


def exact_key_text(generic: sa.types.TypeEngine[Any], mysql_chars: int) -> sa.types.TypeEngine[Any]:
    """A text column of a sync table's primary key that matches exactly on every database.

    Declared with the tables at import time, before any master is known, hence a type variant rather
    than a `DialectImpl` method: MySQL/MariaDB cannot index TEXT and compare strings ignoring case by
    default, so there the column is a VARCHAR of `mysql_chars` with the binary collation (the lengths of
    a key's columns keep it under InnoDB's 3072 bytes; MySQL names are at most 64 characters).
    """
    from sqlalchemy.dialects import mysql

    exact = mysql.VARCHAR(mysql_chars, charset="utf8mb4", collation="utf8mb4_bin")
    return generic.with_variant(exact, "mysql", "mariadb")


__all__ = ["DialectImpl", "UnsupportedDatabase", "dialect_name", "driver_transient_kind", "exact_key_text", "impl_for"]
