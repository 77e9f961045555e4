"""Keys the master assigns anew at load, and the rows that hold them.

New rows of a self-referencing table with a generated key (employee → manager) when the master took
the key of one of them meanwhile: that row is remapped, and a new row under it must point at its new key.

Rows with their own keys are written before remapped ones (the generator must hand remapped rows keys past
them); a new row whose manager is remapped was written first, with the manager's local key, which named the
master's own row under that key: no error, the wrong manager. Now it takes a generated key too and is
written after its manager. A cycle of such rows (each the other's manager) cannot be written in any order:
the load fails naming it, and nothing is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from sync_pipeline.engine import store
from sync_pipeline.engine.master import connect_master, init_master
from sync_pipeline.engine.settings import parse_settings
from sync_pipeline_tests.conftest import fresh_master_url
from sync_pipeline_tests.helpers import checked_out, cli_sync, master_of, master_state, replica_sql
from sync_pipeline_tests.masters import backend_on_all_masters  # noqa: F401 - `backend` over all three masters

SETTINGS = "modules:\n  staff:\n    policy: master_wins\n    tables:\n      employee: {}\n"


def _employee_master(url: str) -> sa.Engine:
    metadata = sa.MetaData()
    sa.Table(
        "employee",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(40), nullable=False),
        sa.Column("manager_id", sa.Integer, sa.ForeignKey("employee.id")),
    )
    return master_of(url, metadata, SETTINGS, {"employee": [{"name": "boss"}, {"name": "clerk", "manager_id": 1}]})


def _managers(engine: sa.Engine) -> dict[str, str | None]:
    """Each employee's name -> the name of their manager."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, name, manager_id FROM employee")).all()
    names = {r.id: r.name for r in rows}
    assert len(names) == len({r.name for r in rows}), rows
    return {r.name: names.get(r.manager_id) if r.manager_id is not None else None for r in rows}


def _master_inserts(engine: sa.Engine, name: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO employee (name) VALUES (:n)"), {"n": name})


def test_a_new_row_under_a_remapped_new_manager_points_at_its_new_key(master_url: str, tmp_path: Path) -> None:
    engine = _employee_master(master_url)
    replica = checked_out(
        engine,
        tmp_path,
        "INSERT INTO employee (id, name, manager_id) VALUES (3, 'new boss', NULL)",  # the master takes 3
        "INSERT INTO employee (id, name, manager_id) VALUES (4, 'new hire', 3)",  # 4 stays free on the master
        "INSERT INTO employee (id, name, manager_id) VALUES (5, 'second hire', 4)",
        "INSERT INTO employee (id, name, manager_id) VALUES (6, 'clerk two', 1)",
    )
    _master_inserts(engine, "master hire")  # id 3 on the master

    code, output = cli_sync(master_url, replica)

    assert code == 0, output
    assert _managers(engine) == {
        "boss": None,
        "clerk": "boss",
        "master hire": None,
        "new boss": None,
        "new hire": "new boss",
        "second hire": "new hire",
        "clerk two": "boss",
    }
    _master_inserts(engine, "after the sync")  # the generator moved past every key the load wrote


def test_new_rows_that_manage_each_other_under_a_taken_key_fail_naming_the_cycle(
    master_url: str, tmp_path: Path
) -> None:
    engine = _employee_master(master_url)
    replica = checked_out(
        engine,
        tmp_path,
        "INSERT INTO employee (id, name, manager_id) VALUES (3, 'north', NULL)",
        "INSERT INTO employee (id, name, manager_id) VALUES (4, 'south', 3)",
        "UPDATE employee SET manager_id = 4 WHERE id = 3",
    )
    _master_inserts(engine, "master hire")  # takes 3: 'north' is remapped, and 'south' waits for it

    code, output = cli_sync(master_url, replica)

    assert code == 1, output
    assert "cycle" in output and "employee" in output and "break the cycle" in output, output
    with engine.connect() as conn:
        names = set(conn.execute(sa.text("SELECT name FROM employee")).scalars())
        statuses = list(conn.execute(sa.select(store.sync_session.c.status)).scalars())
    assert names == {"boss", "clerk", "master hire"}, "a failed load writes none of its rows"
    assert statuses == ["failed"]


INVOICE_SETTINGS = "modules:\n  billing:\n    policy: master_wins\n    tables:\n      invoice: {}\n"
ORDER_SETTINGS = (
    "modules:\n  sales:\n    policy: master_wins\n    tables:\n"
    "      orders: {}\n      order_line: {}\n      line_note: {}\n"
)


def _order_line_table(metadata: sa.MetaData) -> sa.Table:
    """Lines keyed by their order's key and a number."""
    return sa.Table(
        "order_line",
        metadata,
        sa.Column("order_id", sa.Integer, sa.ForeignKey("orders.id"), primary_key=True, autoincrement=False),
        sa.Column("line_no", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("product", sa.String(20)),
    )


def _order_master(url: str) -> sa.Engine:
    """Orders with generated keys; their lines keyed by (order_id, line_no); notes pointing at a line."""
    metadata = sa.MetaData()
    sa.Table("orders", metadata, sa.Column("id", sa.Integer, primary_key=True), sa.Column("customer", sa.String(20)))
    _order_line_table(metadata)
    sa.Table(
        "line_note",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("order_id", sa.Integer),
        sa.Column("line_no", sa.Integer),
        sa.Column("note", sa.String(20)),
        sa.ForeignKeyConstraint(["order_id", "line_no"], ["order_line.order_id", "order_line.line_no"]),
    )
    rows = {
        "orders": [{"customer": "a"}, {"customer": "b"}],
        "order_line": [{"order_id": 1, "line_no": 1, "product": "p1"}, {"order_id": 2, "line_no": 1, "product": "p2"}],
    }
    return master_of(url, metadata, ORDER_SETTINGS, rows)


def test_the_lines_of_a_remapped_order_take_its_new_key_and_their_notes_follow(master_url: str, tmp_path: Path) -> None:
    """A line's key holds its order's key: when the order is remapped, the line is a new row under the new
    order, not the master's line under the local key (before: taken for an insert_insert with another order's
    line and dropped, and its note attached to that other order's line)."""
    engine = _order_master(master_url)
    replica = checked_out(
        engine,
        tmp_path,
        "INSERT INTO orders (id, customer) VALUES (3, 'local')",
        "INSERT INTO order_line VALUES (3, 1, 'local product')",
        "INSERT INTO line_note (order_id, line_no, note) VALUES (3, 1, 'local note')",
    )
    with engine.begin() as conn:  # the master's order 3, with a line 1 of its own
        conn.execute(sa.text("INSERT INTO orders (customer) VALUES ('master')"))
        conn.execute(sa.text("INSERT INTO order_line VALUES (3, 1, 'master product')"))

    code, output = cli_sync(master_url, replica)

    assert code == 0, output
    with engine.connect() as conn:
        lines = {
            (customer, product)
            for customer, product in conn.execute(
                sa.text("SELECT o.customer, l.product FROM order_line l JOIN orders o ON o.id = l.order_id")
            )
        }
        notes = set(
            conn.execute(
                sa.text(
                    "SELECT o.customer, l.product, n.note FROM line_note n "
                    "JOIN order_line l ON l.order_id = n.order_id AND l.line_no = n.line_no "
                    "JOIN orders o ON o.id = l.order_id"
                )
            )
        )
    assert lines == {("a", "p1"), ("b", "p2"), ("master", "master product"), ("local", "local product")}
    assert {tuple(n) for n in notes} == {("local", "local product", "local note")}


def test_a_generated_key_far_beyond_the_masters_is_not_kept(master_url: str, tmp_path: Path) -> None:
    """A replica's own generator hands out keys just past the ones it was given. A hand-made key near the
    end of the column's range, kept, would move the master's generator there: every later insert of the
    master's applications would get a key from the end of the range, until there are none. The master
    assigns such a row a key of its own, and rows under it follow."""
    engine = _employee_master(master_url)
    replica = checked_out(
        engine,
        tmp_path,
        "INSERT INTO employee (id, name, manager_id) VALUES (2000000000, 'far boss', NULL)",
        "INSERT INTO employee (id, name, manager_id) VALUES (2000000001, 'far hire', 2000000000)",
        "INSERT INTO employee (id, name, manager_id) VALUES (7, 'near hire', 1)",  # within reach: kept
    )

    code, output = cli_sync(master_url, replica)

    assert code == 0, output
    assert _managers(engine) == {
        "boss": None,
        "clerk": "boss",
        "far boss": None,
        "far hire": "far boss",
        "near hire": "boss",
    }
    _master_inserts(engine, "after the sync")
    with engine.connect() as conn:
        keys = dict(conn.execute(sa.text("SELECT name, id FROM employee")).all())
    assert keys["near hire"] == 7
    assert max(keys.values()) < 100, keys


def test_a_far_value_of_a_column_a_sequence_feeds_is_bad_input(tmp_path: Path) -> None:
    """Not a key, so not remapped: an invoice number is data. A hand-made one near the end of the range
    would move the master's sequence there; the sync refuses it (exit 2, the master as it was) and goes
    through once the replica leaves the number to the master."""
    with fresh_master_url("postgresql", tmp_path) as url:
        engine = connect_master(url, must_exist=False)
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE SEQUENCE invoice_no")
            conn.exec_driver_sql(
                "CREATE TABLE invoice (id serial PRIMARY KEY, number integer NOT NULL "
                "DEFAULT nextval('invoice_no') UNIQUE, amount integer)"
            )
            conn.exec_driver_sql("INSERT INTO invoice (amount) VALUES (10), (20)")
        init_master(engine, parse_settings(INVOICE_SETTINGS, "invoices.yaml"))
        replica = checked_out(engine, tmp_path, "INSERT INTO invoice (number, amount) VALUES (2000000000, 30)")
        before = master_state(engine)

        code, output = cli_sync(url, replica)

        assert code == 2, output
        assert "'number'" in output and "2000000000" in output and "leave the column empty" in output, output
        assert master_state(engine) == before
        replica_sql(replica, "UPDATE invoice SET number = NULL WHERE amount = 30")
        code, output = cli_sync(url, replica)
        assert code == 0, output
        with engine.connect() as conn:
            numbers = dict(conn.exec_driver_sql("SELECT amount, number FROM invoice").all())
        assert numbers == {10: 1, 20: 2, 30: 3}
        engine.dispose()


def _numbered_order_master(url: str, policy: str) -> sa.Engine:
    metadata = sa.MetaData()
    sa.Table(
        "orders",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("order_no", sa.String(8), nullable=False, unique=True),
    )
    _order_line_table(metadata)
    settings = (
        f"modules:\n  sales:\n    policy: {policy}\n    tables:\n"
        "      orders: {natural_key: [order_no]}\n      order_line: {}\n"
    )
    return master_of(url, metadata, settings, {"orders": [{"order_no": "A"}, {"order_no": "B"}]})


@pytest.mark.parametrize("policy", ["local_wins", "master_wins"])
def test_the_lines_of_a_duplicate_order_are_compared_with_that_orders_lines(
    master_url: str, tmp_path: Path, policy: str
) -> None:
    """The local order 3 is the master's order 4 by its number; its line `(3, 1)` is line 1 of order 4,
    not the line `(3, 1)` of the master's other order 3 (before: compared with that one, an insert_insert,
    and under local_wins the other order's line was overwritten)."""
    engine = _numbered_order_master(master_url, policy)
    replica = checked_out(
        engine,
        tmp_path,
        "INSERT INTO orders (id, order_no) VALUES (3, 'X')",
        "INSERT INTO order_line VALUES (3, 1, 'local first')",
        "INSERT INTO order_line VALUES (3, 2, 'local second')",
    )
    with engine.begin() as conn:
        conn.execute(sa.text("INSERT INTO orders (order_no) VALUES ('Y')"))  # key 3
        conn.execute(sa.text("INSERT INTO orders (order_no) VALUES ('X')"))  # key 4: the local order's record
        conn.execute(sa.text("INSERT INTO order_line VALUES (3, 1, 'y first')"))
        conn.execute(sa.text("INSERT INTO order_line VALUES (4, 1, 'x first')"))

    code, output = cli_sync(master_url, replica)

    assert code == 0, output
    with engine.connect() as conn:
        lines = set(
            conn.execute(
                sa.text("SELECT o.order_no, l.line_no, l.product FROM order_line l JOIN orders o ON o.id = l.order_id")
            ).all()
        )
    first_of_x = "local first" if policy == "local_wins" else "x first"
    assert {tuple(r) for r in lines} == {("Y", 1, "y first"), ("X", 1, first_of_x), ("X", 2, "local second")}
