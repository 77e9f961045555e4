"""A MariaDB schema as companies run them: an unsigned BIGINT AUTO_INCREMENT key, a unique e-mail as the
natural key, a VIRTUAL and a STORED generated column, `ON UPDATE CURRENT_TIMESTAMP`, a version counter kept
by the master's own BEFORE UPDATE trigger, TIME/YEAR/BIT/SET/DOUBLE/BLOB columns, and order lines with a
composite key under a foreign key ON DELETE CASCADE. Both sides change it; the master's rows are asserted."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from sync_pipeline.engine.master import connect_master, init_master
from sync_pipeline.engine.session import run_sync
from sync_pipeline.engine.settings import parse_settings
from sync_pipeline_tests.conftest import fresh_mariadb_url
from sync_pipeline_tests.helpers import make_replica, pause

DDL = [
    """CREATE TABLE customer (
      id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
      email VARCHAR(120) NOT NULL UNIQUE,
      name VARCHAR(80) NOT NULL,
      born YEAR NULL,
      opens TIME(3) NULL,
      active BIT(1) NOT NULL DEFAULT b'1',
      tags SET('vip','b2b','new') NULL,
      score DOUBLE NULL,
      note TEXT NULL,
      photo BLOB NULL,
      label VARCHAR(210) AS (CONCAT(name, ' <', email, '>')) VIRTUAL,
      name_length INT AS (CHAR_LENGTH(name)) STORED,
      updated_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
      version INT NOT NULL DEFAULT 0
    ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
    """CREATE TABLE invoice_line (
      customer_id BIGINT UNSIGNED NOT NULL,
      line_no SMALLINT NOT NULL,
      amount DECIMAL(12,3) NOT NULL,
      PRIMARY KEY (customer_id, line_no),
      CONSTRAINT invoice_customer FOREIGN KEY (customer_id) REFERENCES customer(id) ON DELETE CASCADE
    ) ENGINE=InnoDB""",
    "CREATE TRIGGER customer_version BEFORE UPDATE ON customer FOR EACH ROW SET NEW.version = OLD.version + 1",
]
SETTINGS = (
    "modules:\n  crm:\n    policy: newest_wins\n    tables:\n"
    "      customer: {natural_key: [email]}\n      invoice_line: {}\n"
)
COLUMNS = (
    "id, email, name, born, CAST(opens AS CHAR), active + 0, tags, score, note, HEX(photo), label, name_length, version"
)


@pytest.fixture
def master() -> Iterator[Engine]:
    with fresh_mariadb_url() as url:
        engine = connect_master(url, must_exist=False)
        with engine.begin() as conn:
            for statement in DDL:
                conn.exec_driver_sql(statement)
            conn.exec_driver_sql(
                "INSERT INTO customer (email, name, born, opens, tags, score, note, photo) VALUES "
                "('a@x', 'Ann', 1990, '08:30:00.250', 'vip,b2b', 1.5, 'n', X'00FF'), "
                "('b@x', 'Bob', NULL, NULL, NULL, NULL, NULL, NULL)"
            )
            conn.exec_driver_sql("INSERT INTO invoice_line VALUES (1, 1, 10.5), (1, 2, 3.25), (2, 1, 7)")
        init_master(engine, parse_settings(SETTINGS, "settings.yaml"))
        yield engine
        engine.dispose()


def _rows(engine: Engine, sql: str) -> list[tuple[object, ...]]:
    with engine.connect() as conn:
        return [tuple(r) for r in conn.exec_driver_sql(sql)]


def test_a_company_schema_on_mariadb_synchronises_both_ways(master: Engine, tmp_path: Path) -> None:
    replica = make_replica(master, tmp_path)
    conn = sqlite3.connect(replica)
    with conn:
        conn.execute(
            "UPDATE customer SET name = 'Anna', opens = '9:15:00.5', born = 1991, tags = 'new', active = 0, "
            "photo = X'0102', score = 2.5 WHERE id = 1"
        )
        conn.execute("UPDATE invoice_line SET amount = '11.125' WHERE customer_id = 1 AND line_no = 1")
        conn.execute("INSERT INTO customer (email, name, opens, tags) VALUES ('c@x', 'Cid', '23:59:59.999', 'vip')")
        (new_id,) = conn.execute("SELECT id FROM customer WHERE email = 'c@x'").fetchone()
        conn.execute("INSERT INTO invoice_line VALUES (?, 1, '1.000')", (new_id,))
        conn.execute("DELETE FROM invoice_line WHERE customer_id = 2")
    conn.close()
    pause()
    with master.begin() as mconn:  # meanwhile on the master: another field of Ann, and a new customer
        mconn.exec_driver_sql("UPDATE customer SET note = 'master' WHERE id = 1")
        mconn.exec_driver_sql("INSERT INTO customer (email, name) VALUES ('m@x', 'Max')")

    result = run_sync(master, replica)

    assert result.status == "done", result
    customers = {r[1]: r for r in _rows(master, f"SELECT {COLUMNS} FROM customer")}
    assert customers["a@x"] == (
        1,
        "a@x",
        "Anna",
        1991,
        "09:15:00.500",
        0,
        "new",
        2.5,
        "master",
        "0102",
        "Anna <a@x>",
        4,
        2,
    )  # both sides' fields, computed columns by the master, the trigger's counter moved by each update
    cid = customers["c@x"]
    assert cid[1:] == ("c@x", "Cid", None, "23:59:59.999", 1, "vip", None, None, None, "Cid <c@x>", 3, 0)
    assert cid[0] not in (1, 2) and customers["m@x"][0] != cid[0]  # remapped past the master's new row
    assert _rows(master, "SELECT customer_id, line_no, amount FROM invoice_line ORDER BY 1, 2") == [
        (1, 1, Decimal("11.125")),
        (1, 2, Decimal("3.250")),
        (cid[0], 1, Decimal("1.000")),
    ]
    (updated_at,) = _rows(master, "SELECT updated_at FROM customer WHERE id = 1")[0]
    assert isinstance(updated_at, dt.datetime)


def test_a_local_delete_never_cascades_into_rows_the_master_added(master: Engine, tmp_path: Path) -> None:
    """The foreign key cascades on delete; a line the master added after the checkout must not vanish with
    a customer the replica deleted (the load never deletes a row master rows still reference)."""
    replica = make_replica(master, tmp_path)
    conn = sqlite3.connect(replica)
    with conn:
        conn.execute("DELETE FROM invoice_line WHERE customer_id = 2")
        conn.execute("DELETE FROM customer WHERE id = 2")
    conn.close()
    with master.begin() as mconn:
        mconn.exec_driver_sql("INSERT INTO invoice_line VALUES (2, 2, 99)")

    result = run_sync(master, replica)

    assert result.status == "done", result
    assert [r[0] for r in _rows(master, "SELECT email FROM customer ORDER BY id")] == ["a@x", "b@x"]
    assert _rows(master, "SELECT line_no, amount FROM invoice_line WHERE customer_id = 2") == [(2, Decimal("99.000"))]
