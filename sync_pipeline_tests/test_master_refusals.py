"""A local value the master's own constraints refuse (a CHECK, a unique index no setting names): the load
rolls back whole, `sync` fails naming the constraint and, where the database says it, the row or key,
and the master's business rows are as they were. On every master."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from sync_pipeline.cli import main
from sync_pipeline.engine.master import connect_master, init_master
from sync_pipeline.engine.session_apply import refusal_text
from sync_pipeline.engine.settings import parse_settings
from sync_pipeline_tests.helpers import make_replica, replica_sql, rows
from sync_pipeline_tests.masters import backend_on_all_masters  # noqa: F401 (the `backend` fixture)

SETTINGS = "modules:\n  shop:\n    policy: master_wins\n    tables:\n      item: {}\n"


def _master(url: str) -> sa.Engine:
    engine = connect_master(url, must_exist=False)
    metadata = sa.MetaData()
    sa.Table(
        "item",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("code", sa.String(20), nullable=False, unique=True),
        sa.Column("price", sa.Integer, nullable=False),
        sa.CheckConstraint("price >= 0", name="price_not_negative"),
    )
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO item (id, code, price) VALUES (1, 'A', 10), (2, 'B', 20)"))
    init_master(engine, parse_settings(SETTINGS, "settings.yaml"))
    return engine


@pytest.mark.parametrize(
    ("edits", "named"),
    [
        (["UPDATE item SET price = -1 WHERE id = 2", "UPDATE item SET price = 11 WHERE id = 1"], "price_not_negative"),
        (["INSERT INTO item (id, code, price) VALUES (3, 'A', 5)"], "code"),  # a unique index no setting names
    ],
    ids=["check", "unique"],
)
def test_a_value_the_master_refuses_fails_the_sync_and_leaves_the_rows(
    backend: str, master_url: str, tmp_path: Path, edits: list[str], named: str
) -> None:
    engine = _master(master_url)
    replica = make_replica(engine, tmp_path)
    replica_sql(replica, *edits)
    before = rows(engine, "item")

    result = CliRunner().invoke(main, ["sync", "--master", master_url, "--replica", str(replica)])

    assert result.exit_code == 1, result.output
    assert "the master refused the session's changes" in result.output and named in result.output, result.output
    assert rows(engine, "item") == before  # the whole load rolled back, the valid edit of row 1 too
    engine.dispose()


# A validation trigger of the master's own, as many schemas have: no price above 1000.
PRICE_TRIGGERS = {
    "sqlite": [
        "CREATE TRIGGER price_cap BEFORE UPDATE ON item WHEN NEW.price > 1000 "
        "BEGIN SELECT RAISE(ABORT, 'price_cap: at most 1000'); END"
    ],
    "postgresql": [
        "CREATE FUNCTION price_cap() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN IF NEW.price > 1000 THEN "
        "RAISE EXCEPTION 'price_cap: at most 1000'; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER price_cap BEFORE UPDATE ON item FOR EACH ROW EXECUTE FUNCTION price_cap()",
    ],
    "mariadb": [
        "CREATE TRIGGER price_cap BEFORE UPDATE ON item FOR EACH ROW BEGIN IF NEW.price > 1000 THEN "
        "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'price_cap: at most 1000'; END IF; END"
    ],
}


def test_a_trigger_of_the_master_refusing_a_value_fails_the_sync(backend: str, master_url: str, tmp_path: Path) -> None:
    engine = _master(master_url)
    with engine.begin() as conn:
        for statement in PRICE_TRIGGERS[backend]:
            conn.exec_driver_sql(statement)
    replica = make_replica(engine, tmp_path)
    replica_sql(replica, "UPDATE item SET price = 5000 WHERE id = 1")
    before = rows(engine, "item")

    result = CliRunner().invoke(main, ["sync", "--master", master_url, "--replica", str(replica)])

    assert result.exit_code == 1, result.output
    assert "the master refused the session's changes" in result.output, result.output
    assert "price_cap: at most 1000" in result.output, result.output
    assert rows(engine, "item") == before
    engine.dispose()


def test_the_refusal_keeps_the_databases_detail_in_one_line() -> None:
    reason = (
        'duplicate key value violates unique constraint "item_code_key"\n'
        "DETAIL:  Key (code)=(A) already exists.\nCONTEXT:  SQL statement ..."
    )
    assert (
        refusal_text(reason)
        == 'duplicate key value violates unique constraint "item_code_key" (Key (code)=(A) already exists.)'
    )
    assert refusal_text("CHECK constraint failed: price_not_negative") == "CHECK constraint failed: price_not_negative"
