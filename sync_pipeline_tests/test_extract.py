"""Extraction: the change log coalesces into net changes per row (docs/sync_rules.md §2)."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa

from sync_pipeline.engine.extract import extract_changes
from sync_pipeline.engine.master import connect_master
from sync_pipeline.engine.replica import open_replica
from sync_pipeline_tests.helpers import TABLES, make_master, make_replica, replica_engine

P, C, T = TABLES["parent"], TABLES["child"], TABLES["tagged"]


def _changes(url: str, replica: Path) -> dict[tuple[str, tuple], object]:
    engine = connect_master(url)
    opened = open_replica(engine, replica)
    try:
        return {(c.table, c.key): c for c in extract_changes(opened.conn, opened.infos).changes}
    finally:
        opened.close()


def test_coalescing_rules(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    engine = make_master(url)
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        # update + update = one update with the union of the changed fields
        r.execute(sa.update(P).where(P.c.id == 1).values(city="X"))
        r.execute(sa.update(P).where(P.c.id == 1).values(name="Y"))
        # a field changed and changed back = no change
        r.execute(sa.update(P).where(P.c.id == 2).values(city="elsewhere"))
        r.execute(sa.update(P).where(P.c.id == 2).values(city="Base"))
        # one field changed back, another kept
        r.execute(sa.update(P).where(P.c.id == 3).values(city="tmp", name="kept"))
        r.execute(sa.update(P).where(P.c.id == 3).values(city="Base"))
        # insert then delete = nothing
        r.execute(sa.insert(C).values(id=100, parent_id=1, label="short-lived"))
        r.execute(sa.delete(C).where(C.c.id == 100))
        # insert then update = insert of the final row
        r.execute(sa.insert(C).values(id=101, parent_id=1, label="first", amount=Decimal("1.00")))
        r.execute(sa.update(C).where(C.c.id == 101).values(label="final"))
        # update then delete = delete, with the base of before the update
        r.execute(sa.update(C).where(C.c.id == 2).values(label="changed first"))
        r.execute(sa.delete(C).where(C.c.id == 2))
        # delete then re-insert with the same values = nothing
        r.execute(sa.delete(T).where(T.c.code == "A"))
        r.execute(sa.insert(T).values(code="A", version=1, title="Ä one", valid_from=None))
        # a changed primary key = the old row deleted and a new one inserted
        r.execute(sa.update(C).where(C.c.id == 3).values(id=300))

    changes = _changes(url, replica)
    assert set(changes) == {
        ("parent", (1,)),
        ("parent", (3,)),
        ("child", (101,)),
        ("child", (2,)),
        ("child", (3,)),
        ("child", (300,)),
    }
    p1 = changes[("parent", (1,))]
    assert (p1.op, sorted(p1.changed)) == ("update", ["city", "name"])
    assert p1.base["city"] == "Base" and p1.local == {"id": 1, "name": "Y", "city": "X", "email": "p1@example.com"}
    assert changes[("parent", (3,))].changed == ["name"]
    c101 = changes[("child", (101,))]
    assert c101.op == "insert" and c101.local["label"] == "final" and c101.local["amount"] == Decimal("1.00")
    c2 = changes[("child", (2,))]
    assert c2.op == "delete" and c2.base["label"] == "C2"
    assert changes[("child", (3,))].op == "delete" and changes[("child", (300,))].op == "insert"


def test_extraction_reads_only_the_log(tmp_path: Path) -> None:
    """Rows nobody touched are never read: dropping them from the replica changes nothing."""
    url = f"sqlite:///{tmp_path / 'm.db'}"
    engine = make_master(url)
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(P).where(P.c.id == 1).values(city="X"))
    conn = sqlite3.connect(replica)
    conn.execute("DELETE FROM child")
    # Untracked (its log entries removed; the triggers must stay, a sync refuses a replica without them):
    # extraction must not notice.
    conn.execute("DELETE FROM _sync_log WHERE table_name = 'child'")
    conn.commit()
    conn.close()
    assert list(_changes(url, replica)) == [("parent", (1,))]


def test_times_are_per_field(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    engine = make_master(url)
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(P).where(P.c.id == 1).values(city="X"))
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(P).where(P.c.id == 1).values(name="Y"))
    change = _changes(url, replica)[("parent", (1,))]
    assert change.times["city"] <= change.times["name"] == change.times["*"]
