"""`checkout`: copy module tables into a new SQLite replica with change capture and a signed manifest,
and register the replica on the master as offline.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import os
import sqlite3
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import dialect as sqlite_dialect
from sqlalchemy.engine import Engine

from sync_pipeline.engine import store
from sync_pipeline.engine.column_types import carrier_of, replica_type
from sync_pipeline.engine.dialects import impl_for
from sync_pipeline.engine.dialects.sqlite_replica import install_replica_log
from sync_pipeline.engine.errors import BadInputError, ReplicaError
from sync_pipeline.engine.manifest import Manifest, schema_snapshot, write_manifest
from sync_pipeline.engine.master import create_private_file, master_settings, require_capture
from sync_pipeline.engine.records import ReplicaStatus
from sync_pipeline.engine.replica_names import free_name
from sync_pipeline.engine.schema import TableInfo, dumps, filled_by_default, fk_order, reflect_tables
from sync_pipeline.engine.signing_key import require_signing_key

CHUNK_ROWS = 10_000

# Called with (table, rows copied so far, total rows of the table).
Progress = Callable[[str, int, int], None]


@dataclass
class CheckoutResult:
    replica_id: str
    path: Path
    owner: str
    modules: list[str]
    rows: dict[str, int]


def sqlite_value(value: Any) -> Any:
    """A master value as the replica stores it (also for looking rows up in a replica)."""
    if value is None or isinstance(value, (int, float, str, bytes)):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, (dict, list)):
        return dumps(value)  # arrays as JSON lists, their Decimals and dates as text
    return str(value)


def _rowid_type(column_type: sa.types.TypeEngine[Any]) -> sa.types.TypeEngine[Any]:
    """A generated integer key becomes SQLite's INTEGER PRIMARY KEY, the rowid (64-bit): SQLite allows
    AUTOINCREMENT on no other spelling, so a BIGINT or SMALLINT key would make the checkout fail."""
    return sa.Integer() if isinstance(column_type, sa.Integer) else column_type


def replica_metadata(infos: dict[str, TableInfo]) -> sa.MetaData:
    """The replica's tables: the master's columns in their generic types; FKs only between copied tables,
    with the unique columns they point at."""
    metadata = sa.MetaData()
    # SQLite takes a foreign key to other columns than the key only where they are declared unique
    # ("foreign key mismatch" on every write with foreign keys on): the master's unique column comes along.
    referenced: dict[str, set[tuple[str, ...]]] = {}
    for info in infos.values():
        for fk in info.foreign_keys:
            parent = infos.get(fk.parent_table)
            if parent is not None and sorted(fk.parent_columns) != sorted(parent.pk):
                referenced.setdefault(fk.parent_table, set()).add(fk.parent_columns)
    for name in fk_order(infos):
        info = infos[name]
        columns = [
            sa.Column(
                c.name,
                _rowid_type(replica_type(c)) if info.generated_pk and c.primary_key else replica_type(c),
                primary_key=c.primary_key,
                # A column the master fills or computes may stay empty in a local insert (see load_columns);
                # a key never (SQLite would take NULL in a key that is not its rowid).
                nullable=c.nullable
                or (not c.primary_key and (filled_by_default(c) or c.name in info.generated_columns)),
                autoincrement=info.generated_pk and c.primary_key,
            )
            for c in info.table.columns
        ]
        fks = [
            sa.ForeignKeyConstraint(
                list(fk.columns),
                [f"{fk.parent_table}.{c}" for c in fk.parent_columns],
                ondelete=replica_action(fk.on_delete),
                onupdate=replica_action(fk.on_update),
            )
            for fk in info.foreign_keys
            if fk.parent_table in infos
        ]
        # AUTOINCREMENT: SQLite must never hand a deleted row's generated key to a new local row, or
        # extraction would fold "delete 5, insert another record as 5" into an update of record 5.
        uniques = [sa.UniqueConstraint(*unique) for unique in sorted(referenced.get(name, ()))]
        sa.Table(name, metadata, *columns, *fks, *uniques, sqlite_autoincrement=info.generated_pk)
    return metadata


def replica_action(action: str | None) -> str | None:
    """The master's referential action as the replica's: a local application that deletes an order (with
    SQLite's foreign keys on) sees its lines go, or their reference emptied, as on the master, and the log
    records those rows. SET DEFAULT is left out: the replica's columns do not carry the master's defaults."""
    normal = (action or "").upper()
    return normal if normal in ("CASCADE", "SET NULL") else None


def checkout(
    engine: Engine,
    replica_path: str | Path,
    owner: str,
    modules: Iterable[str] | None = None,
    progress: Progress | None = None,
) -> CheckoutResult:
    path = Path(replica_path)
    if not owner.strip():
        raise BadInputError("the owner is empty", "pass --owner with the name of the person taking the replica")
    if path.exists():
        raise ReplicaError(f"{path} already exists", "choose a new path for the replica, or delete the old file")
    if not path.parent.exists():
        raise ReplicaError(f"the folder {path.parent} does not exist", "create it or choose another path")
    meta = store.read_meta(engine)
    settings = master_settings(engine)
    chosen = list(dict.fromkeys(modules)) if modules else list(settings.modules)
    unknown = [m for m in chosen if m not in settings.modules]
    if unknown:
        raise BadInputError(f"unknown module(s): {', '.join(unknown)}", f"choose from: {', '.join(settings.modules)}")
    infos = reflect_tables(engine, settings.tables(chosen))
    require_capture(engine, infos, settings)
    replica_id = store.new_id()
    checked_out_at = _master_clock(engine)
    manifest = Manifest(
        replica_id=replica_id,
        owner=owner,
        modules=chosen,
        master_id=meta["master_id"],
        checked_out_at=checked_out_at,
        settings=settings.source_text,
        schema=schema_snapshot(infos),
    )
    manifest.sign(require_signing_key(engine, meta["master_id"]))

    partial = path.with_name(f".{path.name}.partial")
    partial.unlink(missing_ok=True)
    rows: dict[str, int] = {}
    try:
        create_private_file(partial)  # a replica holds company data: only its owner reads it (0600)
        replica = sqlite3.connect(partial, isolation_level=None)
        try:
            replica.execute("PRAGMA journal_mode = OFF")
            replica.execute("PRAGMA synchronous = OFF")
            rmeta = replica_metadata(infos)
            for table in rmeta.sorted_tables:
                replica.execute(str(sa.schema.CreateTable(table).compile(dialect=sqlite_dialect())))
            replica.execute("BEGIN")
            # One snapshot of the master for every table, so parents and children agree.
            with engine.connect() as mconn:
                mconn = impl_for(mconn).snapshot(mconn)
                with mconn.begin():
                    for name in fk_order(infos):
                        rows[name] = _copy_table(mconn, replica, infos[name], rmeta.tables[name], progress)
            install_replica_log(replica, [infos[n] for n in fk_order(infos)])
            write_manifest(replica, manifest)
            replica.execute("COMMIT")
            replica.execute("PRAGMA journal_mode = DELETE")
        finally:
            replica.close()
        with engine.begin() as conn:
            conn.execute(
                sa.insert(store.sync_replica).values(
                    replica_id=replica_id,
                    owner=owner,
                    modules=json.dumps(chosen),
                    checked_out_at=checked_out_at,
                    status=ReplicaStatus.OFFLINE,
                    path=str(path.resolve()),
                    settings=settings.source_text,
                    schema_hash=manifest.schema_hash,
                    partition_key=free_name(conn, owner, replica_id),
                )
            )
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return CheckoutResult(replica_id, path, owner, chosen, rows)


def _converter_for(column: sa.Column[Any]) -> Callable[[Any], Any] | None:
    """How a value of this master column is stored in SQLite; None where the driver's value fits as is
    (integers, and text: also the database's text of types carried as text, see column_types)."""
    if carrier_of(column).kind in ("int", "str", "enum", "text"):
        return None
    return sqlite_value


def _master_clock(engine: Engine) -> str:
    """The checkout time on the master's own clock, so that it compares with its change times (the
    machine's clock where the master has no change capture)."""
    try:
        with engine.connect() as conn:
            return impl_for(conn).now(conn)
    except BadInputError:
        return store.now_iso()


def _copy_table(
    mconn: sa.Connection,
    replica: sqlite3.Connection,
    info: TableInfo,
    target: sa.Table,
    progress: Progress | None,
) -> int:
    # Counting costs a scan: only when someone watches the progress.
    total = mconn.execute(sa.select(sa.func.count()).select_from(info.table)).scalar_one() if progress else 0
    columns = [target.columns[c] for c in info.columns]
    # Compiled once from Core in qmark style: sqlite3's executemany with positional rows is the fast path.
    compiled = sa.insert(target).compile(
        dialect=sqlite_dialect(paramstyle="qmark"), column_keys=[c.name for c in columns]
    )
    insert_sql = str(compiled)
    order = list(compiled.positiontup or [])
    if order != [c.name for c in columns]:
        raise RuntimeError(f"unexpected parameter order in {insert_sql}")
    converters = [_converter_for(info.table.columns[c]) for c in info.columns]
    copied = 0
    if progress:
        progress(info.name, 0, total)
    query = sa.select(*[info.table.columns[c] for c in info.columns])
    # Streamed in chunks straight from the driver, so a table of any size is copied in constant memory.
    for chunk in impl_for(mconn).stream_rows(mconn, query, CHUNK_ROWS):
        if any(converters):
            chunk = [
                tuple(v if f is None or v is None else f(v) for f, v in zip(converters, row, strict=True))
                for row in chunk
            ]
        replica.executemany(insert_sql, chunk)
        copied += len(chunk)
        if progress:
            progress(info.name, copied, total)
    return copied
