"""Opening a replica for a sync: every check that makes a replica trustworthy, before anything is written.

Missing, not SQLite, not a replica, tampered (signature), of another master, unknown to the master,
retired, or checked out from a schema that has drifted since: each is refused with a `ReplicaError`
or `SchemaDriftError` that says what is wrong and what to do.
"""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync_pipeline.engine import store
from sync_pipeline.engine.checkout import sqlite_value
from sync_pipeline.engine.dialects.sqlite_replica import set_replica_frozen
from sync_pipeline.engine.errors import ReplicaError, SchemaDriftError
from sync_pipeline.engine.faults import checkpoint
from sync_pipeline.engine.manifest import (
    Manifest,
    open_replica_file,
    read_manifest,
    schema_snapshot,
    set_manifest_status,
)
from sync_pipeline.engine.master import require_capture
from sync_pipeline.engine.records import ReplicaStatus, SessionStatus
from sync_pipeline.engine.replica_guard import (
    READ_SECONDS,
    VERIFY_SECONDS,
    arm,
    check_log_size,
    check_manifest_table,
    check_structure,
    refused,
    shown,
)
from sync_pipeline.engine.schema import TableInfo, normalize_row, reflect_tables
from sync_pipeline.engine.settings import SyncSettings, parse_settings
from sync_pipeline.engine.signing_key import require_signing_key

# How often each file (by resolved path) was opened and fully verified in this process. A sync opens its
# replica once per run (run_driver), not once per step; the tests hold the driver to that by this count.
verified_opens: Counter[str] = Counter()


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
        try:
            cursor = self.conn.execute(str(compiled), [sqlite_value(p) for p in params])
            found = cursor.fetchone()
        except sqlite3.Error as exc:
            raise refused(self.path, exc) from None
        if found is None:
            return None
        names = [d[0] for d in cursor.description]
        return normalize_row(dict(zip(names, found, strict=True)), info.table)


def open_replica(engine: Engine, path: str | Path, *, allow_retired: bool = False) -> OpenReplica:
    """The replica, verified: its structure, its manifest against the master's record, the master's schema.

    The file is read-only until every check passed; what the sync uses (modules, settings, owner, checkout
    time, schema) is the master's record of the checkout, and a manifest that disagrees is refused even
    when its signature is valid. With `allow_retired`, a replica whose load committed but whose file was
    not retired yet is returned (to finish that); once the master recorded the file's retirement, never.
    """
    file = Path(path)
    verified_opens[str(file.resolve())] += 1
    conn = open_replica_file(file)
    try:
        manifest = read_manifest(conn, file)
        meta = store.read_meta(engine)
        if manifest.master_id != meta["master_id"]:
            raise ReplicaError(
                f"replica {file} was checked out from another master (master id {shown(manifest.master_id)}, "
                f"this master is {meta['master_id']})",
                "sync it against the master it came from (--master / SYNC_MASTER_URL)",
            )
        if not manifest.signature_valid(require_signing_key(engine, meta["master_id"])):
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
            done = mconn.execute(
                sa.select(store.sync_session.c.session_id).where(
                    store.sync_session.c.replica_id == manifest.replica_id,
                    store.sync_session.c.status == SessionStatus.DONE,
                )
            ).first()
        if record is None:
            raise ReplicaError(
                f"replica {shown(manifest.replica_id)} is not registered on this master",
                "check out a new replica from this master",
            )
        _check_against_record(file, manifest, record)
        if (record["status"] == ReplicaStatus.RETIRED or done is not None) and (
            not allow_retired or record["file_retired_at"] is not None or record["status"] != ReplicaStatus.RETIRED
        ):
            raise already_synchronised(file, manifest, record)
        settings = parse_settings(record["settings"], f"<settings of replica {manifest.replica_id} on the master>")
        _check_settings_unchanged(engine, settings, manifest)
        infos = _reflect_checked(engine, manifest)
        if done is None and record["status"] != ReplicaStatus.RETIRED:  # still to be loaded
            require_capture(engine, infos, settings)
        check_structure(conn, file, infos)
        check_log_size(conn, file)
        version = _identity(conn, file)
    finally:
        conn.close()
    # Verified: from now on the sync may write (freeze, retire), on a fresh connection to the same file.
    conn = open_replica_file(file, writable=True)
    try:
        if _identity(conn, file) != version:
            raise ReplicaError(
                f"replica {file} changed while it was being verified", "let whatever writes to it finish; sync again"
            )
        arm(conn, READ_SECONDS)
    except BaseException:
        conn.close()
        raise
    return OpenReplica(file, conn, manifest, settings, infos, dict(record))


def _identity(conn: sqlite3.Connection, file: Path) -> tuple[int, int, int]:
    stat = file.stat()
    return stat.st_dev, stat.st_ino, int(conn.execute("PRAGMA schema_version").fetchone()[0])


def _check_against_record(file: Path, manifest: Manifest, record: Any) -> None:
    """The master's record of the checkout decides; a manifest that says otherwise is refused, whoever
    signed it (the signing key may have leaked: it must not widen anyone's rights)."""
    differences = []
    if manifest.owner != record["owner"]:
        differences.append(f"owner ('{shown(manifest.owner)}' in the file, '{record['owner']}' on the master)")
    recorded_modules = json.loads(record["modules"])
    if manifest.modules != recorded_modules:
        in_file = shown(", ".join(manifest.modules), 200)
        differences.append(f"modules ({in_file} in the file, {', '.join(recorded_modules)} on the master)")
    if manifest.checked_out_at != record["checked_out_at"]:
        differences.append(
            f"checkout time ({shown(manifest.checked_out_at)} in the file, {record['checked_out_at']} on the master)"
        )
    if manifest.settings != record["settings"]:
        differences.append("settings (modules, policies or tables differ from those frozen at checkout)")
    if manifest.schema_hash != record["schema_hash"]:
        differences.append("schema fingerprint (tables, keys or column types)")
    if differences:
        raise ReplicaError(
            f"the manifest of replica {file} disagrees with the master's record of its checkout: "
            + "; ".join(differences),
            "a replica is synchronised under what the master recorded at checkout; check out a new replica",
        )


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
        conn = open_replica_file(file, writable=True)
    except ReplicaError:
        return
    try:
        manifest = read_manifest(conn, file)
        if manifest.status == "frozen":
            set_replica_frozen_file(conn, manifest.tables, None, "open")
    finally:
        conn.close()


def retire(replica_path: str | Path, replica_tables: list[str], when: str, *, master: Engine, replica_id: str) -> None:
    """Retire the file of a replica whose load committed, then record that on the master: from then on the
    master refuses the replica whatever its file says (a copy kept from before, a status edited back)."""
    conn = open_replica_file(replica_path, writable=True)
    try:
        message = f"this replica was synchronised and retired at {when}; check out a new replica to keep working"
        set_replica_frozen_file(conn, replica_tables, message, "retired")
    finally:
        conn.close()
    with master.begin() as mconn:
        mconn.execute(
            sa.update(store.sync_replica)
            .where(
                store.sync_replica.c.replica_id == replica_id,
                store.sync_replica.c.status == ReplicaStatus.RETIRED,
                store.sync_replica.c.file_retired_at.is_(None),
            )
            .values(file_retired_at=store.now_iso())
        )


def retire_replica(master: Engine, replica: OpenReplica, when: str | None = None) -> None:
    """`retire` for an opened replica; `when` defaults to the master's record of the retirement (a load
    that committed before the process could retire the file)."""
    retire(
        replica.path,
        replica.manifest.tables,
        when or replica.record["retired_at"],
        master=master,
        replica_id=replica.manifest.replica_id,
    )


def set_replica_frozen_file(conn: sqlite3.Connection, tables: list[str], message: str | None, status: str) -> None:
    arm(conn, VERIFY_SECONDS)  # a write of the product's own, to a verified table: its own budget
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.Error as exc:
        raise refused(None, exc) from None
    try:
        # Nothing of the file's own may run on the write below (checked again under the write lock).
        check_manifest_table(conn, "the replica")
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
    except sqlite3.Error as exc:
        conn.execute("ROLLBACK")
        raise refused(None, exc) from None
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    finally:
        arm(conn, READ_SECONDS)
