"""The replica's manifest: who checked it out, which modules, from which master, under which settings
and schema, signed with the master's key so that a tampered replica is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from sync_pipeline.engine.errors import ReplicaError
from sync_pipeline.engine.schema import TableInfo

MANIFEST_TABLE = "_sync_manifest"
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
    conn.execute("CREATE TABLE IF NOT EXISTS _sync_manifest (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    values = {name: getattr(manifest, name) for name in (*SIGNED_FIELDS, "signature", "status")}
    conn.executemany(
        "INSERT OR REPLACE INTO _sync_manifest (key, value) VALUES (?, ?)",
        [(k, json.dumps(v, ensure_ascii=False)) for k, v in values.items()],
    )


def open_replica_file(path: str | Path) -> sqlite3.Connection:
    """Open a replica, refusing what is missing, not SQLite, or not a replica."""
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
    conn = sqlite3.connect(f"file:{file}?mode=rw", uri=True, isolation_level=None)
    try:
        conn.execute("PRAGMA schema_version").fetchone()
        found = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ?", (MANIFEST_TABLE,)
        ).fetchone()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise ReplicaError(f"{file} is damaged or truncated ({exc})", "use an intact copy of the replica") from None
    if not found:
        conn.close()
        raise ReplicaError(
            f"{file} is a SQLite database but not a replica (it has no {MANIFEST_TABLE} table)",
            "pass the file that `sync-pipeline checkout` created",
        )
    return conn


def read_manifest(conn: sqlite3.Connection, path: str | Path) -> Manifest:
    try:
        raw = dict(conn.execute("SELECT key, value FROM _sync_manifest").fetchall())
        values = {k: json.loads(v) for k, v in raw.items()}
        return Manifest(**{k: values[k] for k in (*SIGNED_FIELDS, "signature", "status")})
    except (KeyError, TypeError, ValueError, sqlite3.DatabaseError) as exc:
        raise ReplicaError(
            f"the manifest of replica {path} is incomplete or unreadable ({exc!r})",
            "the replica was damaged or edited; check out a new replica",
        ) from None


def set_manifest_status(conn: sqlite3.Connection, status: str) -> None:
    conn.execute("UPDATE _sync_manifest SET value = ? WHERE key = 'status'", (json.dumps(status),))
