"""MariaDB's own types and names (issue 12 point 3), master -> replica -> change log -> master.

A table named `order` (a reserved word) with an AUTO_INCREMENT key, a utf8mb4 VARCHAR holding 4-byte
characters, DECIMAL, DATETIME(6), TINYINT(1) as a boolean, ENUM and JSON. Each value is edited in the
replica and synchronised; the master's stored values are asserted. A zero date is bad input: exit 2 with
a message naming it, the master unchanged.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Engine

from sync_pipeline.cli import main
from sync_pipeline.engine.master import connect_master, init_master
from sync_pipeline.engine.session import run_sync
from sync_pipeline.engine.settings import parse_settings
from sync_pipeline_tests.conftest import fresh_mariadb_url
from sync_pipeline_tests.helpers import make_replica, master_state

SETTINGS = "modules:\n  shop:\n    policy: master_wins\n    tables:\n      order: {natural_key: [code]}\n"
WHEN = dt.datetime(2026, 11, 30, 12, 34, 56, 789012)


def _order_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "order",
        metadata,
        sa.Column("id", mysql.INTEGER, primary_key=True, autoincrement=True),
        sa.Column("code", mysql.VARCHAR(20), nullable=False, unique=True),
        sa.Column("customer", mysql.VARCHAR(60, charset="utf8mb4")),
        sa.Column("total", mysql.DECIMAL(10, 2)),
        sa.Column("placed_at", mysql.DATETIME(fsp=6)),
        sa.Column("paid", mysql.TINYINT(1)),
        sa.Column("status", mysql.ENUM("new", "paid", "shipped")),
        sa.Column("details", mysql.JSON),
        sa.Column("shipped_on", mysql.DATE),
        mysql_charset="utf8mb4",
    )


@pytest.fixture
def master(tmp_path: Path) -> Iterator[tuple[str, Engine]]:
    with fresh_mariadb_url() as url:
        engine = connect_master(url, must_exist=False)
        metadata = sa.MetaData()
        table = _order_table(metadata)
        metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(
                sa.insert(table),
                [
                    {
                        "id": 1,
                        "code": "A-1",
                        "customer": "Zoë 😀",
                        "total": Decimal("12.50"),
                        "placed_at": WHEN,
                        "paid": 0,
                        "status": "new",
                        "details": {"gift": False, "lines": [1, 2]},
                        "shipped_on": None,
                    },
                    {
                        "id": 2,
                        "code": "A-2",
                        "customer": "Müller",
                        "total": Decimal("0.10"),
                        "placed_at": None,
                        "paid": 1,
                        "status": "paid",
                        "details": None,
                        "shipped_on": None,
                    },
                ],
            )
        init_master(engine, parse_settings(SETTINGS, "test-settings.yaml"))
        yield url, engine
        engine.dispose()


def _master_row(engine: Engine, key: int) -> dict[str, object]:
    table = sa.Table("order", sa.MetaData(), autoload_with=engine)
    with engine.connect() as conn:
        return dict(conn.execute(sa.select(table).where(table.c.id == key)).mappings().one())


def _replica_sql(replica: Path, statement: str, *params: object) -> None:
    conn = sqlite3.connect(replica)
    conn.execute(statement, params)
    conn.commit()
    conn.close()


def test_types_and_reserved_name_travel_both_ways(master: tuple[str, Engine], tmp_path: Path) -> None:
    url, engine = master
    replica = make_replica(engine, tmp_path)
    conn = sqlite3.connect(replica)  # the checkout carried every value as it is on the master
    first = conn.execute(
        'SELECT customer, total, placed_at, paid, status, details FROM "order" WHERE id = 1'
    ).fetchone()
    conn.close()
    assert first[0] == "Zoë 😀" and first[3] in (0, False) and first[4] == "new"
    assert json.loads(first[5]) == {"gift": False, "lines": [1, 2]}
    _replica_sql(
        replica,
        'UPDATE "order" SET customer = ?, total = ?, placed_at = ?, paid = 1, status = ?, details = ?, '
        "shipped_on = ? WHERE id = 1",
        "Zoë 🦊 𝄞",
        "99.95",
        "2026-12-01 08:00:00.000001",
        "shipped",
        json.dumps({"gift": True}),
        "2026-12-02",
    )
    _replica_sql(
        replica,
        'INSERT INTO "order" (code, customer, total, paid, status) VALUES (?, ?, ?, ?, ?)',
        "B-1",
        "李 𠀋",
        "1.00",
        0,
        "new",
    )
    result = run_sync(engine, replica)
    assert result.status == "done", result
    assert _master_row(engine, 1) == {
        "id": 1,
        "code": "A-1",
        "customer": "Zoë 🦊 𝄞",
        "total": Decimal("99.95"),
        "placed_at": dt.datetime(2026, 12, 1, 8, 0, 0, 1),
        "paid": 1,
        "status": "shipped",
        "details": '{"gift": true}',
        "shipped_on": dt.date(2026, 12, 2),
    }
    with engine.connect() as conn:
        new = conn.execute(sa.text("SELECT id, customer, total FROM `order` WHERE code = 'B-1'")).one()
    assert new.customer == "李 𠀋" and new.total == Decimal("1.00") and new.id > 2
    # AUTO_INCREMENT moved past the explicit keys and the synchronised insert: the master's next row follows.
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO `order` (code) VALUES ('C-1')"))
        assert conn.execute(sa.text("SELECT id FROM `order` WHERE code = 'C-1'")).scalar_one() > new.id


def test_zero_date_is_bad_input_and_master_unchanged(master: tuple[str, Engine], tmp_path: Path) -> None:
    url, engine = master
    replica = make_replica(engine, tmp_path)
    _replica_sql(
        replica, "UPDATE \"order\" SET placed_at = '0000-00-00 00:00:00', shipped_on = '0000-00-00' WHERE id = 2"
    )
    before = master_state(engine)
    result = CliRunner().invoke(main, ["sync", "--master", url, "--replica", str(replica)])
    assert result.exit_code == 2, result.output
    assert "0000-00-00" in result.output and "placed_at" in result.output, result.output
    assert master_state(engine) == before


SHIFT_SETTINGS = "modules:\n  hr:\n    policy: master_wins\n    tables:\n      shift: {}\n"


@pytest.fixture
def shift_master() -> Iterator[tuple[str, Engine]]:
    """TIME (a duration: over 24 hours and negative are valid), BIT(1) with a default SQLAlchemy's reflection
    drops, SET and YEAR: types of real MariaDB schemas."""
    with fresh_mariadb_url() as url:
        engine = connect_master(url, must_exist=False)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "CREATE TABLE shift (id INT AUTO_INCREMENT PRIMARY KEY, starts TIME(3) NULL, "
                    "length TIME NULL, night BIT(1) NOT NULL DEFAULT b'0', days SET('mon','tue','wed') NULL, "
                    "since YEAR NULL)"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO shift (starts, length, night, days, since) VALUES "
                    "('08:30:00.250', '30:00:00', b'1', 'mon,wed', 2019), ('22:00', '-01:30:00', b'0', NULL, NULL)"
                )
            )
        init_master(engine, parse_settings(SHIFT_SETTINGS, "test-settings.yaml"))
        yield url, engine
        engine.dispose()


def _shifts(engine: Engine) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        query = "SELECT id, CAST(starts AS CHAR), CAST(length AS CHAR), night + 0, days, since FROM shift ORDER BY id"
        return [tuple(r) for r in conn.execute(sa.text(query))]


def test_time_bit_set_and_year_travel_both_ways(shift_master: tuple[str, Engine], tmp_path: Path) -> None:
    url, engine = shift_master
    replica = make_replica(engine, tmp_path)
    conn = sqlite3.connect(replica)  # TIME as the server's text, BIT as its number
    assert conn.execute("SELECT starts, length, night, days FROM shift ORDER BY id").fetchall() == [
        ("08:30:00.250", "30:00:00", 1, "mon,wed"),
        ("22:00:00.000", "-01:30:00", 0, None),
    ]
    conn.close()
    _replica_sql(replica, "UPDATE shift SET starts = '9:15', length = '100:00:00', night = 0 WHERE id = 1")
    _replica_sql(replica, "UPDATE shift SET days = 'mon,tue,wed', since = 2024 WHERE id = 2")
    _replica_sql(replica, "INSERT INTO shift (starts, length) VALUES ('23:59:59.999', '-838:59:59')")
    result = run_sync(engine, replica)
    assert result.status == "done", result
    assert _shifts(engine) == [
        (1, "09:15:00.000", "100:00:00", 0, "mon,wed", 2019),
        (2, "22:00:00.000", "-01:30:00", 0, "mon,tue,wed", 2024),
        (3, "23:59:59.999", "-838:59:59", 0, None, None),  # night: the master's default b'0'
    ]


def test_a_time_the_server_cannot_read_is_bad_input(shift_master: tuple[str, Engine], tmp_path: Path) -> None:
    url, engine = shift_master
    replica = make_replica(engine, tmp_path)
    _replica_sql(replica, "UPDATE shift SET starts = '25:61' WHERE id = 2")
    before = master_state(engine)
    result = CliRunner().invoke(main, ["sync", "--master", url, "--replica", str(replica)])
    assert result.exit_code == 2, result.output
    assert "25:61" in result.output and "starts" in result.output, result.output
    assert master_state(engine) == before
