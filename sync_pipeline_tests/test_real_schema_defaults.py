"""Real schemas' key and default conventions, on every master.

- A generated key declared BIGINT (bigserial, BIGINT AUTO_INCREMENT, `BIGINT PRIMARY KEY` identity) is the
  replica's INTEGER PRIMARY KEY: SQLite allows AUTOINCREMENT on no other spelling, and a BIGINT key made
  the checkout fail.
- A NOT NULL column the master fills (a default, a status, a timestamp) may be left out of a local insert:
  the replica accepts the row and the master's default fills it when the row is loaded.
- A computed column is left empty by a local insert and computed by the master.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync_pipeline.engine.master import connect_master, init_master
from sync_pipeline.engine.session import run_sync
from sync_pipeline.engine.settings import parse_settings
from sync_pipeline_tests.helpers import make_replica, replica_sql
from sync_pipeline_tests.masters import backend_on_all_masters  # noqa: F401 (the `backend` fixture)

SETTINGS = "modules:\n  crm:\n    policy: master_wins\n    tables:\n      account: {}\n      visit: {}\n"


def _create(engine: Engine, backend: str) -> None:
    metadata = sa.MetaData()
    sa.Table(
        "account",
        metadata,
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer, "sqlite"),
            sa.Identity() if backend == "postgresql" else None,
            primary_key=True,
        ),
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("status", sa.String(10), nullable=False, server_default="new"),
        sa.Column("credit", sa.Integer, nullable=False, server_default="0"),
        sa.Column(
            "name_length", sa.Integer, sa.Computed("length(name)" if backend != "mariadb" else "char_length(name)")
        ),
        sqlite_autoincrement=True,
    )
    sa.Table(
        "visit",
        metadata,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("account_id", sa.BigInteger, sa.ForeignKey("account.id"), nullable=False),
        sa.Column("note", sa.String(40), nullable=False, server_default="-"),
        sqlite_autoincrement=True,
    )
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO account (name, status, credit) VALUES ('Ann', 'active', 5)"))


def test_bigint_keys_and_master_defaults_travel(backend: str, master_url: str, tmp_path: Path) -> None:
    engine = connect_master(master_url, must_exist=False)
    _create(engine, backend)
    init_master(engine, parse_settings(SETTINGS, "settings.yaml"))
    replica = make_replica(engine, tmp_path)
    # The replica's generated keys are SQLite rowids, and defaulted/computed columns may stay empty.
    replica_sql(
        replica,
        "INSERT INTO account (name) VALUES ('Bea')",
        "INSERT INTO visit (account_id) SELECT id FROM account WHERE name = 'Bea'",
        "UPDATE account SET credit = 7 WHERE name = 'Ann'",
    )
    result = run_sync(engine, replica)
    assert result.status == "done", result
    with engine.connect() as conn:
        accounts = {
            r.name: (r.status, r.credit, r.name_length)
            for r in conn.execute(sa.text("SELECT name, status, credit, name_length FROM account"))
        }
        visits = conn.execute(sa.text("SELECT a.name, v.note FROM visit v JOIN account a ON a.id = v.account_id")).all()
    assert accounts == {"Ann": ("active", 7, 3), "Bea": ("new", 0, 3)}
    assert [tuple(v) for v in visits] == [("Bea", "-")]
    engine.dispose()
