"""The replica's manifest: who checked it out, which modules, from which master, under which settings
and schema, signed with the master's key so that a tampered replica is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sync_pipeline.engine.errors import ReplicaError
from sync_pipeline.engine.replica_guard import (
    MANIFEST_TABLE_SQL,
    MAX_MANIFEST_ENTRIES,
    check_manifest_table,
    guard,
    refused,
)
from sync_pipeline.engine.schema import TableInfo

SIGNED_FIELDS = ("replica_id", "owner", "modules", "master_id", "checked_out_at", "settings", "schema")


@dataclass
class Manifest:
    replica_id: str
    owner: str
    modules: list[str]
    master_id: str
    checked_out_at: str
    settings: str
    schema: dict[str, Any]
    signature: str = ""
    status: str = "open"  # open | frozen | retired (not signed: it changes during the replica's life)

    def payload(self) -> bytes:
        fields = {name: getattr(self, name) for name in SIGNED_FIELDS}
        return json.dumps(fields, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()

    def sign(self, key: str) -> None:
        self.signature = hmac.new(bytes.fromhex(key), self.payload(), hashlib.sha256).hexdigest()

    def signature_valid(self, key: str) -> bool:
        expected = hmac.new(bytes.fromhex(key), self.payload(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, self.signature)

    @property
    def tables(self) -> list[str]:
        return list(self.schema["tables"])

    @property
    def schema_hash(self) -> str:
        return schema_hash(self.schema)


def schema_snapshot(infos: dict[str, TableInfo]) -> dict[str, Any]:
    """What the replica was checked out against: per table its key and each column's type."""
    return {
        "tables": {
            name: {
                "pk": list(info.pk),
                "generated_pk": info.generated_pk,
                "columns": {c.name: _type_text(c) for c in info.table.columns},
            }
            for name, info in infos.items()
        }
    }


def _type_text(column: sa.Column) -> str:
    try:
        text = repr(column.type.as_generic())
    except NotImplementedError:
        text = repr(column.type)
    return f"{text}{'' if column.nullable else ' NOT NULL'}"


def schema_hash(schema: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(schema, sort_keys=True).encode()).hexdigest()


def write_manifest(conn: sqlite3.Connection, manifest: Manifest) -> None:
    conn.execute(MANIFEST_TABLE_SQL)
    values = {name: getattr(manifest, name) for name in (*SIGNED_FIELDS, "signature", "status")}
    conn.executemany(
        "INSERT OR REPLACE INTO _sync_manifest (key, value) VALUES (?, ?)",
        [(k, json.dumps(v, ensure_ascii=False)) for k, v in values.items()],
    )


def open_replica_file(path: str | Path, *, writable: bool = False) -> sqlite3.Connection:
    """Open a replica, refusing what is missing, not SQLite, or not a replica.

    Read-only unless `writable` (a sync opens it writable only once every check passed), and bounded
    (`replica_guard.guard`); the manifest table is checked before anything is read from it.
    """
    file = Path(path)
    if not file.exists():
        raise ReplicaError(f"replica {file} does not exist", "check the path given with --replica")
    if not file.is_file():
        raise ReplicaError(f"replica {file} is not a file", "pass the replica's .db file, not a folder")
    with file.open("rb") as handle:
        header = handle.read(16)
    if header != b"SQLite format 3\x00":
        raise ReplicaError(
            f"{file} is not a SQLite database, so it cannot be a replica",
            "pass the file that `sync-pipeline checkout` created",
        )
    uri = f"{file.resolve().as_uri()}?mode={'rw' if writable else 'ro'}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    try:
        guard(conn)
        try:
            conn.execute("PRAGMA schema_version").fetchone()
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "") != "SQLITE_READONLY_ROLLBACK":
                raise
            # A write to the file was cut off (a crash while freezing): only a writer may roll its journal
            # back. Rolling back copies pages; none of the file's SQL runs. Then read-only again.
            conn.close()
            _roll_back_hot_journal(file)
            conn = sqlite3.connect(uri, uri=True, isolation_level=None)
            guard(conn)
            conn.execute("PRAGMA schema_version").fetchone()
        check_manifest_table(conn, file)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise ReplicaError(f"{file} is damaged or truncated ({exc})", "use an intact copy of the replica") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _roll_back_hot_journal(file: Path) -> None:
    writer = sqlite3.connect(f"{file.resolve().as_uri()}?mode=rw", uri=True, isolation_level=None)
    try:
        guard(writer)
        writer.execute("PRAGMA schema_version").fetchone()
    finally:
        writer.close()


_TEXT_FIELDS = ("replica_id", "owner", "master_id", "checked_out_at", "settings", "signature", "status")


def read_manifest(conn: sqlite3.Connection, path: str | Path) -> Manifest:
    """The manifest, every field of the type checkout wrote (a hostile one is refused, never half-used)."""
    try:
        raw = conn.execute("SELECT key, value FROM _sync_manifest LIMIT ?", (MAX_MANIFEST_ENTRIES + 1,)).fetchall()
    except sqlite3.DatabaseError as exc:
        raise refused(path, exc) from None
    try:
        if len(raw) > MAX_MANIFEST_ENTRIES:
            raise ValueError(f"more than {MAX_MANIFEST_ENTRIES} entries")
        values = {k: json.loads(v) for k, v in raw if k in (*SIGNED_FIELDS, "signature", "status")}
        manifest = Manifest(**{k: values[k] for k in (*SIGNED_FIELDS, "signature", "status")})
        _check_types(manifest)
    except (KeyError, TypeError, ValueError, RecursionError) as exc:
        problem = "nested too deeply" if isinstance(exc, RecursionError) else repr(exc)
        raise ReplicaError(
            f"the manifest of replica {path} is incomplete or unreadable ({problem})",
            "the replica was damaged or edited; check out a new replica",
        ) from None
    return manifest


def _check_types(manifest: Manifest) -> None:
    for name in _TEXT_FIELDS:
        if not isinstance(getattr(manifest, name), str):
            raise ValueError(f"{name} is not text")
    if not re.fullmatch(r"[0-9a-f]{64}", manifest.signature):
        raise ValueError("the signature is not 64 hexadecimal digits")
    if manifest.status not in ("open", "frozen", "retired"):
        raise ValueError(f"unknown status {manifest.status[:40]!r}")
    if not isinstance(manifest.modules, list) or not all(isinstance(m, str) for m in manifest.modules):
        raise ValueError("modules is not a list of names")
    tables = manifest.schema.get("tables") if isinstance(manifest.schema, dict) else None
    if not isinstance(tables, dict) or set(manifest.schema) != {"tables"}:
        raise ValueError("schema is not a table list")
    for name, table in tables.items():
        if not (
            isinstance(table, dict)
            and set(table) == {"pk", "generated_pk", "columns"}
            and isinstance(table["pk"], list)
            and all(isinstance(c, str) for c in table["pk"])
            and isinstance(table["generated_pk"], bool)
            and isinstance(table["columns"], dict)
            and all(isinstance(t, str) for t in table["columns"].values())
        ):
            raise ValueError(f"schema of table {name[:60]!r} is malformed")


def set_manifest_status(conn: sqlite3.Connection, status: str) -> None:
    conn.execute("UPDATE _sync_manifest SET value = ? WHERE key = 'status'", (json.dumps(status),))
