"""A master whose change capture has a gap is refused before anything is written: a capture trigger a DBA
dropped or switched off, a partition created after init-master. The master's writes there would not reach
its field clock, so a sync could take a master change for one older than the checkout (and a forged base
would pass the bases' verification). Exit 2, the gap named with the fix, the master as it was; once
init-master ran again, the same replica syncs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from sync_pipeline.cli import main
from sync_pipeline.engine.dialects import impl_for
from sync_pipeline.engine.master import connect_master, init_master
from sync_pipeline.engine.schema import reflect_tables
from sync_pipeline.engine.settings import parse_settings
from sync_pipeline_tests.conftest import fresh_master_url
from sync_pipeline_tests.helpers import TABLES, make_master, make_replica, master_state, replica_sql, row, settings_yaml
from sync_pipeline_tests.masters import backend_on_all_masters  # noqa: F401 - `backend` over all three masters

P = TABLES["parent"]


def _cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def _drop_one_trigger(engine: sa.Engine, table: str) -> str:
    """Drop the table's first capture trigger, as a DBA tidying up triggers might; returns its name."""
    with engine.begin() as conn:
        impl = impl_for(conn)
        info = reflect_tables(conn, [table])[table]
        name = impl.capture_module.trigger_names(info)[0]
        quote = conn.dialect.identifier_preparer.quote
        on = f" ON {quote(table)}" if conn.dialect.name == "postgresql" else ""
        conn.exec_driver_sql(f"DROP TRIGGER {quote(name)}{on}")
    return name


def test_a_dropped_capture_trigger_refuses_sync_and_checkout_until_init_master(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url, "master_wins")
    replica = make_replica(engine, tmp_path)
    replica_sql(replica, "UPDATE parent SET city = 'Local' WHERE id = 1")
    _drop_one_trigger(engine, "child")
    before = master_state(engine)

    code, output = _cli("sync", "--master", master_url, "--replica", str(replica))
    assert code == 2, output
    assert "change capture is missing or switched off" in output and "child" in output
    assert "init-master" in output
    code, output = _cli("checkout", "--master", master_url, "--owner", "ana", "--replica", str(tmp_path / "new.db"))
    assert code == 2 and "child" in output, output
    assert not (tmp_path / "new.db").exists()
    assert master_state(engine) == before, "a refused sync or checkout must leave the master as it was"

    init_master(engine, parse_settings(settings_yaml("master_wins"), "test-settings.yaml"))
    code, output = _cli("sync", "--master", master_url, "--replica", str(replica))
    assert code == 0, output
    assert row(engine, "parent", id=1)["city"] == "Local"


def test_without_master_capture_in_the_settings_no_trigger_is_required(tmp_path: Path) -> None:
    with fresh_master_url("sqlite", tmp_path) as url:
        engine = make_master(url, settings="master_change_capture: false\n" + settings_yaml("master_wins"))
        replica = make_replica(engine, tmp_path)
        replica_sql(replica, "UPDATE parent SET city = 'Local' WHERE id = 1")
        code, output = _cli("sync", "--master", url, "--replica", str(replica))
        assert code == 0, output
        assert row(engine, "parent", id=1)["city"] == "Local"


SALE_SETTINGS = "modules:\n  sales:\n    policy: master_wins\n    tables:\n      sale: {}\n"


@pytest.fixture
def sale_master(tmp_path: Path) -> Iterator[tuple[str, sa.Engine]]:
    with fresh_master_url("postgresql", tmp_path) as url:
        engine = connect_master(url, must_exist=False)
        with engine.begin() as conn:
            for statement in (
                "CREATE TABLE sale (region text, id integer, qty integer, PRIMARY KEY (region, id)) "
                "PARTITION BY LIST (region)",
                "CREATE TABLE sale_eu PARTITION OF sale FOR VALUES IN ('eu')",
                "CREATE TABLE sale_us PARTITION OF sale FOR VALUES IN ('us')",
                "INSERT INTO sale VALUES ('eu', 1, 1), ('us', 1, 1)",
            ):
                conn.exec_driver_sql(statement)
        init_master(engine, parse_settings(SALE_SETTINGS, "sales.yaml"))
        yield url, engine
        engine.dispose()


def _qty(engine: sa.Engine, region: str, id_: int) -> int:
    with engine.connect() as conn:
        query = sa.text("SELECT qty FROM sale WHERE region = :r AND id = :i")
        return conn.execute(query, {"r": region, "i": id_}).scalar_one()


def test_a_partition_created_after_init_master_is_a_gap_until_init_master(
    sale_master: tuple[str, sa.Engine], tmp_path: Path
) -> None:
    url, engine = sale_master
    replica = tmp_path / "sales.db"
    assert _cli("checkout", "--master", url, "--owner", "ana", "--replica", str(replica))[0] == 0
    replica_sql(replica, "UPDATE sale SET qty = 5 WHERE region = 'eu' AND id = 1")
    with engine.begin() as conn:  # a new partition, written straight into: no trigger of ours saw it
        conn.exec_driver_sql("CREATE TABLE sale_asia PARTITION OF sale FOR VALUES IN ('asia')")
        conn.exec_driver_sql("INSERT INTO sale_asia VALUES ('asia', 1, 1)")
    before = master_state(engine)

    code, output = _cli("sync", "--master", url, "--replica", str(replica))
    assert code == 2, output
    assert "sale_asia" in output and "sale_eu" not in output, output
    assert master_state(engine) == before

    init_master(engine, parse_settings(SALE_SETTINGS, "sales.yaml"))
    code, output = _cli("sync", "--master", url, "--replica", str(replica))
    assert code == 0, output
    assert _qty(engine, "eu", 1) == 5


def test_a_disabled_capture_trigger_is_a_gap(sale_master: tuple[str, sa.Engine], tmp_path: Path) -> None:
    url, engine = sale_master
    replica = tmp_path / "sales.db"
    assert _cli("checkout", "--master", url, "--owner", "ana", "--replica", str(replica))[0] == 0
    replica_sql(replica, "UPDATE sale SET qty = 7 WHERE region = 'us' AND id = 1")
    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE sale_us DISABLE TRIGGER sync_clock_sale_upd")

    code, output = _cli("sync", "--master", url, "--replica", str(replica))
    assert code == 2 and "sale_us" in output, output
    assert _qty(engine, "us", 1) == 1

    with engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE sale_us ENABLE TRIGGER sync_clock_sale_upd")
    code, output = _cli("sync", "--master", url, "--replica", str(replica))
    assert code == 0, output
    assert _qty(engine, "us", 1) == 7


def test_a_child_of_plain_inheritance_is_no_gap(tmp_path: Path) -> None:
    """INHERITS makes a table of its own, which init-master leaves alone: not a partition to capture."""
    with fresh_master_url("postgresql", tmp_path) as url:
        engine = connect_master(url, must_exist=False)
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE sale (region text, id integer, qty integer, PRIMARY KEY (region, id))")
            conn.exec_driver_sql("CREATE TABLE sale_archive (archived_on date) INHERITS (sale)")
            conn.exec_driver_sql("INSERT INTO sale VALUES ('eu', 1, 1)")
        init_master(engine, parse_settings(SALE_SETTINGS, "sales.yaml"))
        replica = tmp_path / "sales.db"
        code, output = _cli("checkout", "--master", url, "--owner", "ana", "--replica", str(replica))
        assert code == 0, output
        replica_sql(replica, "UPDATE sale SET qty = 3 WHERE region = 'eu' AND id = 1")
        code, output = _cli("sync", "--master", url, "--replica", str(replica))
        assert code == 0, output
        assert _qty(engine, "eu", 1) == 3
        engine.dispose()
