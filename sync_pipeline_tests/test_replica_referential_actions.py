"""The replica mirrors the master's referential actions (ON DELETE / ON UPDATE CASCADE and SET NULL), so that
a local application with SQLite's foreign keys on behaves as on the master: deleting an order deletes its
lines and empties the reference of its notes, and the change log records those rows, which the sync then
writes; renaming an order's code renames it in the notes that name it. Before, the replica's foreign keys
had no action: the same delete failed in the replica
(`FOREIGN KEY constraint failed`) while the master would have cascaded."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlalchemy as sa

from sync_pipeline_tests.helpers import checked_out, cli_sync, master_of
from sync_pipeline_tests.masters import backend_on_all_masters  # noqa: F401 - `backend` over all three masters

SETTINGS = (
    "modules:\n  sales:\n    policy: master_wins\n    tables:\n      orders: {}\n      line: {}\n      note: {}\n"
)


def _sales_master(url: str) -> sa.Engine:
    metadata = sa.MetaData()
    sa.Table(
        "orders",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("code", sa.String(8), nullable=False, unique=True),
    )
    sa.Table(
        "line",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("order_id", sa.Integer, sa.ForeignKey("orders.id", ondelete="CASCADE"), nullable=False),
        sa.Column("product", sa.String(20)),
    )
    sa.Table(
        "note",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("order_id", sa.Integer, sa.ForeignKey("orders.id", ondelete="SET NULL")),
        sa.Column("order_code", sa.String(8), sa.ForeignKey("orders.code", onupdate="CASCADE")),
        sa.Column("text", sa.String(20)),
    )
    rows = {
        "orders": [{"code": "A"}, {"code": "B"}],
        "line": [{"order_id": 1, "product": "a1"}, {"order_id": 1, "product": "a2"}, {"order_id": 2, "product": "b1"}],
        "note": [
            {"order_id": 1, "order_code": None, "text": "about A"},
            {"order_id": 2, "order_code": "B", "text": "about B"},
        ],
    }
    return master_of(url, metadata, SETTINGS, rows)


def test_a_local_delete_cascades_in_the_replica_as_on_the_master(master_url: str, tmp_path: Path) -> None:
    engine = _sales_master(master_url)
    replica = checked_out(engine, tmp_path)
    local = sqlite3.connect(replica)
    local.execute("PRAGMA foreign_keys = ON")  # as the local application has it
    local.execute("DELETE FROM orders WHERE code = 'A'")
    local.commit()
    assert local.execute("SELECT product FROM line ORDER BY product").fetchall() == [("b1",)]
    assert local.execute("SELECT text, order_id FROM note ORDER BY text").fetchall() == [
        ("about A", None),
        ("about B", 2),
    ]
    local.close()

    code, output = cli_sync(master_url, replica)

    assert code == 0, output
    with engine.connect() as conn:
        assert set(conn.execute(sa.text("SELECT code FROM orders")).scalars()) == {"B"}
        assert set(conn.execute(sa.text("SELECT product FROM line")).scalars()) == {"b1"}
        notes = {tuple(r) for r in conn.execute(sa.text("SELECT text, order_id FROM note"))}
    assert notes == {("about A", None), ("about B", 2)}


def test_a_local_key_rename_cascades_in_the_replica_as_on_the_master(master_url: str, tmp_path: Path) -> None:
    engine = _sales_master(master_url)
    replica = checked_out(engine, tmp_path)
    local = sqlite3.connect(replica)
    local.execute("PRAGMA foreign_keys = ON")
    local.execute("UPDATE orders SET code = 'B2' WHERE code = 'B'")
    local.commit()
    assert local.execute("SELECT order_code FROM note WHERE text = 'about B'").fetchall() == [("B2",)]
    local.close()

    code, output = cli_sync(master_url, replica)

    assert code == 0, output
    with engine.connect() as conn:
        assert set(conn.execute(sa.text("SELECT code FROM orders")).scalars()) == {"A", "B2"}
        notes = {tuple(r) for r in conn.execute(sa.text("SELECT text, order_code FROM note"))}
    assert notes == {("about A", None), ("about B", "B2")}
