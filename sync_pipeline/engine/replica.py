"""Opening a replica for a sync: every check that makes a replica trustworthy, before anything is written.

Missing, not SQLite, not a replica, tampered (signature), of another master, unknown to the master,
retired, or checked out from a schema that has drifted since: each is refused with a `ReplicaError`
or `SchemaDriftError` that says what is wrong and what to do.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync_pipeline.engine import store
from sync_pipeline.engine.capture.sqlite import set_replica_frozen
from sync_pipeline.engine.checkout import sqlite_value
from sync_pipeline.engine.errors import ReplicaError, SchemaDriftError
from sync_pipeline.engine.faults import checkpoint
from sync_pipeline.engine.manifest import (
    Manifest,
    open_replica_file,
    read_manifest,
    schema_snapshot,
    set_manifest_status,
)
from sync_pipeline.engine.schema import TableInfo, normalize_row, reflect_tables
from sync_pipeline.settings import SyncSettings, parse_settings


@dataclass
class OpenReplica:
    path: Path
    conn: sqlite3.Connection
    manifest: Manifest
    settings: SyncSettings
    infos: dict[str, TableInfo]
    record: dict[str, Any]  # the replica's row in sync_replica

    def close(self) -> None:
        self.conn.close()

    def row(self, table: str, key: dict[str, Any]) -> dict[str, Any] | None:
        """One row of the replica by key (used for orphans: the parent's base values)."""
        info = self.infos[table]
        condition = sa.and_(*[info.table.columns[c] == v for c, v in key.items()])
        compiled = (
            sa.select(info.table)
            .where(condition)
            .compile(dialect=sa.dialects.sqlite.dialect(paramstyle="qmark"), compile_kwargs={})
        )
        params = [compiled.params[name] for name in compiled.positiontup or []]
        cursor = self.conn.execute(str(compiled), [sqlite_value(p) for p in params])
        found = cursor.fetchone()
        if found is None:
            return None
        names = [d[0] for d in cursor.description]
        return normalize_row(dict(zip(names, found, strict=True)), info.table)


def open_replica(engine: Engine, path: str | Path, *, allow_retired: bool = False) -> OpenReplica:
    file = Path(path)
    conn = open_replica_file(file)
    try:
        manifest = read_manifest(conn, file)
        meta = store.read_meta(engine)
        if manifest.master_id != meta["master_id"]:
            raise ReplicaError(
                f"replica {file} was checked out from another master (master id {manifest.master_id}, "
                f"this master is {meta['master_id']})",
                "sync it against the master it came from (--master / SYNC_MASTER_URL)",
            )
        if not manifest.signature_valid(meta["signing_key"]):
            raise ReplicaError(
                f"the manifest of replica {file} does not match its signature: it was edited after checkout",
                "a tampered replica is never loaded; check out a new replica",
            )
        with engine.connect() as mconn:
            record = (
                mconn.execute(
                    sa.select(store.sync_replica).where(store.sync_replica.c.replica_id == manifest.replica_id)
                )
                .mappings()
                .first()
            )
        if record is None:
            raise ReplicaError(
                f"replica {manifest.replica_id} is not registered on this master",
                "check out a new replica from this master",
            )
        if record["status"] == "retired" and not allow_retired:
            raise already_synchronised(file, manifest, record)
        settings = parse_settings(manifest.settings, f"<settings frozen in replica {file.name}>")
        _check_settings_unchanged(engine, settings, manifest)
        infos = _reflect_checked(engine, manifest)
        return OpenReplica(file, conn, manifest, settings, infos, dict(record))
    except BaseException:
        conn.close()
        raise


def _check_settings_unchanged(engine: Engine, frozen: SyncSettings, manifest: Manifest) -> None:
    """The replica syncs under the settings frozen at checkout, but every one of its tables must still be
    synchronised by the master, in the same module: otherwise its changes would land where nobody expects."""
    from sync_pipeline.engine.master import master_settings

    current = master_settings(engine)
    problems = []
    for table in manifest.tables:
        then = frozen.module_of(table)
        try:
            now = current.module_of(table)
        except KeyError:
            problems.append(f"table '{table}' is no longer synchronised")
            continue
        if now != then:
            problems.append(f"table '{table}' moved from module '{then}' to '{now}'")
    if problems:
        raise SchemaDriftError(
            "the master's sync settings changed since this replica was checked out: " + "; ".join(problems),
            "check out a new replica under the current settings (or restore the settings with init-master)",
        )


def already_synchronised(file: Path, manifest: Manifest, record: dict[str, Any]) -> ReplicaError:
    return ReplicaError(
        f"replica {file} ({manifest.replica_id}, owner {manifest.owner}) was already synchronised and "
        f"retired at {record['retired_at']}; a replica is synchronised only once",
        "check out a new replica with `sync-pipeline checkout`",
    )


def _reflect_checked(engine: Engine, manifest: Manifest) -> dict[str, TableInfo]:
    try:
        infos = reflect_tables(engine, manifest.tables)
    except KeyError as exc:
        raise SchemaDriftError(
            f"table(s) {', '.join(exc.args[0])} of the replica no longer exist in the master",
            "the master's schema changed since checkout; check out a new replica",
        ) from None
    now = schema_snapshot(infos)["tables"]
    then = manifest.schema["tables"]
    problems: list[str] = []
    for table, old in then.items():
        new = now[table]
        for column, old_type in old["columns"].items():
            if column not in new["columns"]:
                problems.append(f"{table}.{column} was dropped")
            elif new["columns"][column] != old_type:
                problems.append(f"{table}.{column} changed from {old_type} to {new['columns'][column]}")
        for column in new["columns"]:
            if column not in old["columns"]:
                problems.append(f"{table}.{column} was added")
        if new["pk"] != old["pk"]:
            problems.append(f"{table}'s primary key changed from {old['pk']} to {new['pk']}")
    if problems:
        raise SchemaDriftError(
            "the master's schema changed since this replica was checked out: " + "; ".join(problems),
            "apply the same change to the replica's data by hand is not supported; check out a new replica "
            "(or revert the schema change) and redo the local edits",
        )
    return infos


def freeze(replica: OpenReplica, session_id: str) -> None:
    message = (
        f"this replica is being synchronised (session {session_id}): local writes are blocked until the sync finishes"
    )
    set_replica_frozen_file(replica.conn, replica.manifest.tables, message, "frozen")


def unfreeze(replica: OpenReplica) -> None:
    set_replica_frozen_file(replica.conn, replica.manifest.tables, None, "open")


def unfreeze_file(replica_path: str | Path) -> None:
    """Lift a session's freeze from a replica file (never a retirement); a missing file is left alone."""
    file = Path(replica_path)
    if not file.is_file():
        return
    try:
        conn = open_replica_file(file)
    except ReplicaError:
        return
    try:
        manifest = read_manifest(conn, file)
        if manifest.status == "frozen":
            set_replica_frozen_file(conn, manifest.tables, None, "open")
    finally:
        conn.close()


def retire(replica_path: str | Path, replica_tables: list[str], when: str) -> None:
    conn = sqlite3.connect(replica_path, isolation_level=None)
    try:
        message = f"this replica was synchronised and retired at {when}; check out a new replica to keep working"
        set_replica_frozen_file(conn, replica_tables, message, "retired")
    finally:
        conn.close()


def set_replica_frozen_file(conn: sqlite3.Connection, tables: list[str], message: str | None, status: str) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        current = conn.execute("SELECT value FROM _sync_manifest WHERE key = 'status'").fetchone()
        if current is not None and json.loads(current[0]) == "retired" and status != "retired":
            # Another process synchronised this replica meanwhile: a retirement is never undone.
            raise ReplicaError(
                "this replica was synchronised and retired meanwhile; a replica is synchronised only once",
                "check out a new replica with `sync-pipeline checkout`",
            )
        set_replica_frozen(conn, tables, message)
        set_manifest_status(conn, status)
        checkpoint("freeze")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
