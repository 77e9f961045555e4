"""Connecting to the master, preparing it (`init-master`) and checking settings against its schema."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError

from sync_pipeline.engine import store
from sync_pipeline.engine.column_types import refuse_uncarried_columns
from sync_pipeline.engine.dialects import impl_for
from sync_pipeline.engine.errors import BadInputError, CaptureMissingError
from sync_pipeline.engine.faults import checkpoint
from sync_pipeline.engine.schema import TableInfo, fk_order, reflect_tables
from sync_pipeline.engine.settings import SyncSettings, parse_settings
from sync_pipeline.engine.signing_key import read_signing_key, store_signing_key

DEFAULT_HOME = Path.home() / ".sync_pipeline"


def sync_home() -> Path:
    """Where the embedded default master, replicas and inbox live (`SYNC_HOME`, else ~/.sync_pipeline).

    Created 0700 when missing: it holds the master (and its signing key), replicas and the inbox, which
    no other user of the machine may read or drop files into.
    """
    home = Path(os.environ.get("SYNC_HOME", str(DEFAULT_HOME))).expanduser()
    if not home.exists():
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return home


def create_private_file(path: Path) -> None:
    """Create an empty file only its owner can read (0600), whatever the umask; an existing file is kept."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def default_master_url() -> str:
    return os.environ.get("SYNC_MASTER_URL") or f"sqlite:///{sync_home() / 'master.db'}"


def connect_master(url: str | None = None, *, must_exist: bool = True) -> Engine:
    """An engine for the master, set up by its database's `DialectImpl` (`postgresql://` URLs use psycopg 3;
    SQLite enforces foreign keys and its file must exist unless `must_exist=False`)."""
    url = url or default_master_url()
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise BadInputError(
            f"{url!r} is not a database URL", "use e.g. sqlite:///path/master.db or postgresql://user@host/db"
        ) from None
    impl = impl_for(parsed)
    return impl.create_engine(impl.prepare_url(parsed), must_exist=must_exist)


def check_settings_against_schema(settings: SyncSettings, bind: Engine | Connection) -> dict[str, TableInfo]:
    """Every table and column the settings name must exist; returns the reflected module tables."""
    existing = set(sa.inspect(bind).get_table_names())
    for module_name, module in settings.modules.items():
        for table in module.tables:
            if table not in existing:
                raise settings.error(
                    ("modules", module_name, "tables", table),
                    f"table '{table}' does not exist in the master",
                    "use one of: " + ", ".join(sorted(existing - store.SYNC_TABLES)),
                )
    infos = reflect_tables(bind, settings.tables())
    for module_name, module in settings.modules.items():
        for table_name, table in module.tables.items():
            info = infos[table_name]
            where = ("modules", module_name, "tables", table_name)
            if not info.pk:
                raise settings.error(
                    where,
                    f"table '{table_name}' has no primary key",
                    "add a primary key to the table; rows are matched by it",
                )
            named = [
                *(("natural_key", c) for c in table.natural_key or []),
                *(("modified_column", c) for c in [table.modified_column] if c),
                *(("display", c) for c in table.display or []),
            ]
            for key, column in named:
                if column not in info.table.columns:
                    raise settings.error(
                        (*where, key),
                        f"column '{column}' does not exist in table '{table_name}'",
                        "use one of: " + ", ".join(info.columns),
                    )
            policy = table.policy or module.policy
            if policy == "newest_wins" and not settings.master_change_capture and not table.modified_column:
                path = (*where, "policy") if table.policy else ("modules", module_name, "policy")
                raise settings.error(
                    path,
                    f"newest_wins needs change times, but table '{table_name}' has none",
                    "keep master_change_capture: true, or give the table a modified_column, or choose another policy",
                )
    return infos


def init_master(engine: Engine, settings: SyncSettings) -> dict[str, TableInfo]:
    """Create the sync tables, store the settings and install master change capture, in one transaction."""
    infos = check_settings_against_schema(settings, engine)
    refuse_uncarried_columns((info.table for info in infos.values()), engine.dialect)  # before anything is written
    with engine.begin() as conn:
        store.create_sync_tables(conn)
        existing = {row.key: row.value for row in conn.execute(sa.select(store.sync_meta))}
        master_id = existing.get("master_id") or store.new_id()
        # The key moves out of sync_meta (readable by reporting roles) into its own store; it is kept
        # when the master already has one, so replicas checked out before stay valid.
        key = (existing.get("master_id") and read_signing_key(conn, master_id)) or existing.get("signing_key")
        store_signing_key(conn, master_id, key or store.new_signing_key())
        conn.execute(sa.delete(store.sync_meta).where(store.sync_meta.c.key == "signing_key"))
        store.write_meta(
            conn,
            {
                "master_id": master_id,
                "settings": settings.source_text,
                "settings_source": settings.source_path,
                "initialised_at": existing.get("initialised_at") or store.now_iso(),
            },
        )
        if settings.master_change_capture:
            impl = impl_for(conn)
            for info in infos.values():
                impl.install_capture(conn, info)
                # Where DDL commits by itself (MySQL/MariaDB), a failure from here on leaves part of the
                # triggers: init-master run again completes them (every step replaces or keeps what is there).
                checkpoint("init_capture")
    return infos


def require_capture(bind: Engine | Connection, infos: dict[str, TableInfo], settings: SyncSettings) -> None:
    """Refuse to check out or sync while a module table's change capture is missing or switched off.

    The field clock is the master's own record of when its rows changed: the verification of a replica's
    bases and `newest_wins` rest on it. A gap (a partition created after init-master and written straight
    into, a trigger dropped or disabled by hand) would let a master change pass as older than the
    checkout, so nothing proceeds on it; init-master closes every gap without touching data."""
    if not settings.master_change_capture:
        return
    with bind.connect() if isinstance(bind, Engine) else contextlib.nullcontext(bind) as conn:
        impl = impl_for(conn)
        gaps = [gap for name in fk_order(infos) for gap in impl.capture_gaps(conn, infos[name])]
    if gaps:
        raise CaptureMissingError(
            f"the master's change capture is missing or switched off on {', '.join(gaps)}: the master's "
            "writes there do not reach its field clock, so a sync could not tell that they came after the "
            "checkout",
            "run `sync-pipeline init-master --settings FILE` with the master's settings (it installs the "
            "capture on every module table and partition and changes no data), then run this command again",
        )


def master_settings(bind: Engine | Connection) -> SyncSettings:
    meta = store.read_meta(bind)
    return parse_settings(meta["settings"], meta.get("settings_source", "<settings stored on the master>"))
