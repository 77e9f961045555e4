"""Building small masters and replicas for tests, on any backend, and comparing master states."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync_pipeline.engine.checkout import checkout
from sync_pipeline.engine.load import advance_sequence
from sync_pipeline.engine.master import connect_master, init_master
from sync_pipeline.engine.schema import reflect_tables
from sync_pipeline.engine.settings import parse_settings


def sample_metadata() -> sa.MetaData:
    """A small schema with a generated key, a natural key, an FK chain and a composite natural primary key."""
    metadata = sa.MetaData()
    sa.Table(
        "parent",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(50), nullable=False),
        sa.Column("city", sa.String(50)),
        sa.Column("email", sa.String(100), unique=True),
    )
    sa.Table(
        "child",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("parent_id", sa.Integer, sa.ForeignKey("parent.id"), nullable=False),
        sa.Column("label", sa.String(50)),
        sa.Column("amount", sa.Numeric(10, 2)),
    )
    sa.Table(
        "tagged",
        metadata,
        sa.Column("code", sa.String(20), primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("title", sa.Unicode(50)),
        sa.Column("valid_from", sa.Date),
    )
    return metadata


TABLES = sample_metadata().tables

BASE_ROWS: dict[str, list[dict[str, Any]]] = {
    "parent": [{"id": i, "name": f"P{i}", "city": "Base", "email": f"p{i}@example.com"} for i in range(1, 6)],
    "child": [
        {"id": i, "parent_id": (i - 1) % 5 + 1, "label": f"C{i}", "amount": Decimal("1.50") * i} for i in range(1, 11)
    ],
    "tagged": [{"code": "A", "version": 1, "title": "Ä one", "valid_from": None}],
}


def settings_yaml(policy: str, *, table_policies: dict[str, str] | None = None) -> str:
    table_policies = table_policies or {}

    def table(name: str, extra: str = "") -> str:
        policy_line = f" policy: {table_policies[name]}," if name in table_policies else ""
        return f"      {name}: {{{policy_line}{extra}}}\n"

    return (
        "modules:\n"
        "  core:\n"
        f"    policy: {policy}\n"
        "    tables:\n" + table("parent", " natural_key: [email]") + table("child") + table("tagged")
    )


def make_master(
    url: str,
    policy: str = "master_wins",
    rows: dict[str, list[dict[str, Any]]] | None = None,
    settings: str | None = None,
) -> Engine:
    engine = connect_master(url, must_exist=False)
    metadata = sample_metadata()
    metadata.create_all(engine)
    with engine.begin() as conn:
        for name, table_rows in (rows or BASE_ROWS).items():
            if table_rows:
                conn.execute(sa.insert(metadata.tables[name]), table_rows)
        if conn.dialect.name == "postgresql":
            # Rows were inserted with explicit ids: move the serial sequences past them, like a real master.
            for info in reflect_tables(conn, ["parent", "child"]).values():
                advance_sequence(conn, info)
    init_master(engine, parse_settings(settings or settings_yaml(policy), "test-settings.yaml"))
    return engine


def make_replica(engine: Engine, folder: Path, owner: str = "tester", modules: list[str] | None = None) -> Path:
    path = folder / f"replica-{owner}-{time.monotonic_ns()}.db"
    checkout(engine, path, owner, modules)
    return path


def replica_engine(path: Path) -> Engine:
    return sa.create_engine(f"sqlite:///{path}")


def rows(engine: Engine, table: str, where: Any = None) -> list[dict[str, Any]]:
    t = sa.Table(table, sa.MetaData(), autoload_with=engine)
    query = sa.select(t).order_by(*t.primary_key.columns)
    if where is not None:
        query = query.where(where(t))
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def row(engine: Engine, table: str, **key: Any) -> dict[str, Any] | None:
    found = rows(engine, table, lambda t: sa.and_(*[t.c[k] == v for k, v in key.items()]))
    return found[0] if found else None


def master_state(engine: Engine) -> str:
    """A digest of every table of the master (data and sync tables) to prove it did not change.

    For SQLite the file's bytes are hashed; for PostgreSQL every row of every table, in key order.
    """
    if engine.dialect.name == "sqlite":
        return hashlib.sha256(Path(engine.url.database).read_bytes()).hexdigest()  # type: ignore[arg-type]
    digest = hashlib.sha256()
    metadata = sa.MetaData()
    metadata.reflect(engine)
    with engine.connect() as conn:
        for table in sorted(metadata.tables.values(), key=lambda t: t.name):
            order = list(table.primary_key.columns) or list(table.columns)
            digest.update(table.name.encode())
            for record in conn.execute(sa.select(table).order_by(*order)):
                digest.update(repr(tuple(record)).encode())
    return digest.hexdigest()


def pause() -> None:
    """Let the clock move on, so that change times on two sides are ordered (millisecond resolution)."""
    time.sleep(0.02)


def ids(records: Iterable[dict[str, Any]], column: str = "id") -> list[Any]:
    return [r[column] for r in records]


def replica_sql(replica: Path, *statements: str) -> None:
    """Run statements in a replica as a local application would, and commit."""
    conn = sqlite3.connect(replica)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


def master_of(url: str, metadata: sa.MetaData, settings: str, rows: dict[str, list[dict[str, Any]]]) -> Engine:
    """A master with the tables of `metadata`, `rows` inserted without keys (the master generates them, in
    the order given), initialised with `settings`."""
    engine = connect_master(url, must_exist=False)
    metadata.create_all(engine)
    with engine.begin() as conn:
        for table, table_rows in rows.items():
            for values in table_rows:
                conn.execute(sa.insert(metadata.tables[table]).values(values))
    init_master(engine, parse_settings(settings, "test-settings.yaml"))
    return engine


def checked_out(engine: Engine, folder: Path, *statements: str) -> Path:
    """A replica of every module, with `statements` run in it as the local application would."""
    replica = make_replica(engine, folder)
    replica_sql(replica, *statements)
    return replica


def cli_sync(master_url: str, replica: Path) -> tuple[int, str]:
    """`sync-pipeline sync --without-dagster`: its exit code and output."""
    from click.testing import CliRunner

    from sync_pipeline.cli import main

    result = CliRunner().invoke(main, ["sync", "--master", master_url, "--replica", str(replica), "--without-dagster"])
    return result.exit_code, result.output
