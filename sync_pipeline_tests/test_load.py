"""Load behaviour on both backends: key remapping, duplicates with children, the optimistic check,
idempotency, FK order, non-conflicting changes of both sides kept, and a retired replica refused.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from sync_pipeline.engine.errors import ReplicaError
from sync_pipeline.engine.load import execute_plan
from sync_pipeline.engine.load_plan import MasterRow, Operation, Plan
from sync_pipeline.engine.queries import list_conflicts, list_replicas
from sync_pipeline.engine.replica import open_replica
from sync_pipeline.engine.schema import reflect_tables
from sync_pipeline.engine.session import (
    detect_session,
    load_session,
    resolve_session,
    run_sync,
    session_context,
    start_session,
)
from sync_pipeline_tests.helpers import TABLES, make_master, make_replica, master_state, replica_engine, row, rows
from sync_pipeline_tests.masters import backend_on_all_masters  # noqa: F401 - `backend` over all three masters

P, C, T = TABLES["parent"], TABLES["child"], TABLES["tagged"]


def test_remap_generated_key_and_child_follows(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url, "master_wins")
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        local_id = r.execute(
            sa.insert(P).values(name="Local new", city="L", email="ln@example.com").returning(P.c.id)
        ).scalar_one()
        r.execute(sa.insert(C).values(id=200, parent_id=local_id, label="of local new", amount=Decimal("2.25")))
    with engine.begin() as m:
        m.execute(sa.insert(P).values(name="Master new", city="M", email="mn@example.com"))
    assert local_id == 6 and row(engine, "parent", id=6)["name"] == "Master new"

    result = run_sync(engine, replica)

    assert result.status == "done" and result.modules["core"]["remapped"] == 1
    assert list_conflicts(engine) == []
    assert row(engine, "parent", id=6)["name"] == "Master new"
    remapped = rows(engine, "parent", lambda t: t.c.email == "ln@example.com")
    assert len(remapped) == 1 and remapped[0]["id"] not in (6,)
    assert row(engine, "child", id=200) == {
        "id": 200,
        "parent_id": remapped[0]["id"],
        "label": "of local new",
        "amount": Decimal("2.25"),
    }
    # The master's own key generator still works after the sync (PostgreSQL sequences advanced).
    with engine.begin() as m:
        m.execute(sa.insert(P).values(name="after", city="x", email="after@example.com"))


def test_insert_with_free_generated_key_keeps_it_and_sequence_moves_on(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url)
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.insert(P).values(id=50, name="Fifty", city="L", email="fifty@example.com"))
    assert run_sync(engine, replica).status == "done"
    assert row(engine, "parent", id=50)["name"] == "Fifty"
    with engine.begin() as m:
        for i in range(50):  # would collide with 50 if the sequence were left behind
            m.execute(sa.insert(P).values(name=f"n{i}", city="x", email=f"n{i}@example.com"))


def test_duplicate_with_children_repointed(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url, "local_wins")
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        dup = r.execute(
            sa.insert(P).values(name="Dup", city="L", email="same@example.com").returning(P.c.id)
        ).scalar_one()
        r.execute(
            sa.insert(C), [{"id": 301, "parent_id": dup, "label": "a"}, {"id": 302, "parent_id": dup, "label": "b"}]
        )
    with engine.begin() as m:
        m.execute(sa.insert(P).values(id=77, name="Same person", city="M", email="same@example.com"))
    result = run_sync(engine, replica)
    assert result.status == "done"
    assert [c["kind"] for c in list_conflicts(engine)] == ["duplicate"]
    assert rows(engine, "parent", lambda t: t.c.email == "same@example.com") == [
        {"id": 77, "name": "Dup", "city": "L", "email": "same@example.com"}
    ]
    assert [r["parent_id"] for r in rows(engine, "child", lambda t: t.c.id.in_([301, 302]))] == [77, 77]


def test_different_fields_changed_on_both_sides_are_both_kept(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url, "manual")
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(P).where(P.c.id == 2).values(city="Local city"))
        r.execute(sa.update(P).where(P.c.id == 3).values(city="Same"))
    with engine.begin() as m:
        m.execute(sa.update(P).where(P.c.id == 2).values(name="Master name"))
        m.execute(sa.update(P).where(P.c.id == 3).values(city="Same"))  # convergent
    result = run_sync(engine, replica)
    assert result.status == "done" and list_conflicts(engine) == []
    assert row(engine, "parent", id=2) == {
        "id": 2,
        "name": "Master name",
        "city": "Local city",
        "email": "p2@example.com",
    }


def test_fk_order_parent_and_children_inserted_and_deleted(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url)
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.insert(P).values(id=60, name="New parent", city="x", email="np@example.com"))
        r.execute(sa.insert(C).values(id=61, parent_id=60, label="new child"))
        r.execute(sa.delete(C).where(C.c.parent_id == 5))
        r.execute(sa.delete(P).where(P.c.id == 5))
    assert run_sync(engine, replica).status == "done"
    assert row(engine, "child", id=61)["parent_id"] == 60
    assert row(engine, "parent", id=5) is None and rows(engine, "child", lambda t: t.c.parent_id == 5) == []


def test_optimistic_check_master_change_after_detection_is_not_overwritten(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url, "manual")
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(P).where(P.c.id == 1).values(city="Local"))
        r.execute(sa.update(P).where(P.c.id == 2).values(city="Local two"))
    opened = open_replica(engine, replica)
    session_id = start_session(engine, opened)
    ctx = session_context(engine, session_id)
    detect_session(engine, ctx, opened.row)
    assert resolve_session(engine, ctx) == {}  # nothing conflicts yet: ready to load
    # Between detection and load, someone changes row 1 on the master.
    with engine.begin() as m:
        m.execute(sa.update(P).where(P.c.id == 1).values(city="Master after detection"))
    before = (rows(engine, "parent"), rows(engine, "child"))
    ctx = session_context(engine, session_id)
    from sync_pipeline.engine.load import StaleRows

    with pytest.raises(StaleRows):
        load_session(engine, ctx)
    assert (rows(engine, "parent"), rows(engine, "child")) == before  # nothing of the load was written
    opened.close()

    result = run_sync(engine, replica)  # goes back to detection for the stale row: now a conflict
    assert result.status == "waiting" and result.pending == {"core": 1}
    assert row(engine, "parent", id=1)["city"] == "Master after detection"
    assert row(engine, "parent", id=2)["city"] == "Base"  # nothing loaded while waiting
    (conflict,) = list_conflicts(engine, result.session_id, "pending")
    assert conflict["kind"] == "update_update" and conflict["fields"][0]["master"] == "Master after detection"


@pytest.mark.parametrize("master_change", ["one field", "row deleted"])
def test_optimistic_check_finds_one_changed_row_among_many(master_url: str, tmp_path: Path, master_change: str) -> None:
    """Hundreds of rows checked at once (on PostgreSQL a join of the staged rows with the master): the
    master's change of a single field the replica did not write, in one row of them, still refuses the load."""
    parents = [{"id": i, "name": f"P{i}", "city": "Base", "email": f"p{i}@example.com"} for i in range(1, 201)]
    children = [
        {"id": i, "parent_id": (i - 1) % 200 + 1, "label": f"C{i}", "amount": Decimal("1.50") * i}
        for i in range(1, 401)
    ]
    engine = make_master(master_url, "manual", rows={"parent": parents, "child": children, "tagged": []})
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(P).values(city="Local"))
        r.execute(sa.update(C).values(label="Local"))
    opened = open_replica(engine, replica)
    session_id = start_session(engine, opened)
    ctx = session_context(engine, session_id)
    detect_session(engine, ctx, opened.row)
    assert resolve_session(engine, ctx) == {}
    with engine.begin() as m:  # a column the load does not write, in one row of 400
        if master_change == "one field":
            m.execute(sa.update(C).where(C.c.id == 317).values(amount=Decimal("475.51")))
        else:
            m.execute(sa.delete(C).where(C.c.id == 317))
    before = (rows(engine, "parent"), rows(engine, "child"))
    from sync_pipeline.engine.load import StaleRows

    with pytest.raises(StaleRows) as refused:
        load_session(engine, session_context(engine, session_id))
    assert len(refused.value.change_ids) == 1
    assert (rows(engine, "parent"), rows(engine, "child")) == before  # nothing of the load was written
    opened.close()


def test_load_is_idempotent_and_replica_retired_once(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url)
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(C).where(C.c.id == 1).values(amount=Decimal("7.77")))
    result = run_sync(engine, replica)
    ctx = session_context(engine, result.session_id)
    before = master_state(engine)
    assert load_session(engine, ctx) == {"already_loaded": True}
    assert master_state(engine) == before
    assert [r["status"] for r in list_replicas(engine)] == ["retired"]

    with pytest.raises(ReplicaError, match="already synchronised and retired"):
        run_sync(engine, replica)
    assert master_state(engine) == before
    with pytest.raises(sa.exc.IntegrityError, match="retired"), replica_engine(replica).begin() as r:
        r.execute(sa.update(C).where(C.c.id == 1).values(label="too late"))


def test_replica_is_frozen_while_its_session_waits(tmp_path: Path) -> None:
    engine = make_master(f"sqlite:///{tmp_path / 'm.db'}", "manual")
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(P).where(P.c.id == 1).values(city="L"))
    with engine.begin() as m:
        m.execute(sa.update(P).where(P.c.id == 1).values(city="M"))
    assert run_sync(engine, replica).status == "waiting"
    with pytest.raises(sa.exc.IntegrityError, match="being synchronised"), replica_engine(replica).begin() as r:
        r.execute(sa.update(P).where(P.c.id == 2).values(city="blocked"))
    assert [r["status"] for r in list_replicas(engine)] == ["waiting"]


def test_unicode_decimals_dates_and_nulls_round_trip(master_url: str, tmp_path: Path) -> None:
    import datetime as dt

    engine = make_master(master_url)
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.insert(T).values(code="ß✓", version=3, title="Grüße 日本 🚀", valid_from=dt.date(2024, 2, 29)))
        r.execute(sa.update(C).where(C.c.id == 4).values(amount=None, label=None))
        r.execute(sa.update(C).where(C.c.id == 5).values(amount=Decimal("12345678.99")))
    assert run_sync(engine, replica).status == "done"
    assert row(engine, "tagged", code="ß✓", version=3) == {
        "code": "ß✓",
        "version": 3,
        "title": "Grüße 日本 🚀",
        "valid_from": dt.date(2024, 2, 29),
    }
    assert row(engine, "child", id=4) == {"id": 4, "parent_id": 4, "label": None, "amount": None}
    assert row(engine, "child", id=5)["amount"] == Decimal("12345678.99")


@pytest.mark.parametrize("policy", ["master_wins", "local_wins"])
def test_local_delete_of_a_row_the_master_still_references(master_url: str, tmp_path: Path, policy: str) -> None:
    """The replica deletes a parent and its children; meanwhile the master gave it a new child."""
    engine = make_master(master_url, policy)
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.delete(C).where(C.c.parent_id == 2))
        r.execute(sa.delete(P).where(P.c.id == 2))
    with engine.begin() as m:
        m.execute(sa.insert(C).values(id=700, parent_id=2, label="added on the master"))
    result = run_sync(engine, replica)
    assert result.status == "done"
    (conflict,) = list_conflicts(engine, result.session_id)
    assert conflict["kind"] == "delete_update" and conflict["detail"]["referenced_by"] == {"child": 1}
    # Whichever side wins, the master's new child keeps its parent; the replica's child deletes apply.
    assert row(engine, "parent", id=2)["name"] == "P2"
    assert [r["id"] for r in rows(engine, "child", lambda t: t.c.parent_id == 2)] == [700]


def test_delete_referenced_from_a_table_outside_the_modules(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'm.db'}"
    engine = make_master(url, "local_wins")
    with engine.begin() as m:
        m.execute(sa.text("CREATE TABLE invoice (id INTEGER PRIMARY KEY, parent_id INTEGER REFERENCES parent(id))"))
        m.execute(sa.text("INSERT INTO invoice VALUES (1, 3)"))
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.delete(C).where(C.c.parent_id == 3))
        r.execute(sa.delete(P).where(P.c.id == 3))
    result = run_sync(engine, replica)
    assert result.status == "done"
    assert list_conflicts(engine)[0]["detail"]["referenced_by"] == {"invoice": 1}
    assert row(engine, "parent", id=3) is not None


def test_natural_key_taken_between_detection_and_load(master_url: str, tmp_path: Path) -> None:
    """A concurrent insert makes the load's insert violate a unique key: detect again, not fail."""
    engine = make_master(master_url, "master_wins")
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.insert(P).values(id=30, name="Racer local", city="L", email="race@example.com"))
    opened = open_replica(engine, replica)
    session_id = start_session(engine, opened)
    ctx = session_context(engine, session_id)
    detect_session(engine, ctx, opened.row)
    resolve_session(engine, ctx)
    opened.close()
    with engine.begin() as m:
        m.execute(sa.insert(P).values(id=31, name="Racer master", city="M", email="race@example.com"))
    result = run_sync(engine, replica)
    assert result.status == "done"
    assert [c["kind"] for c in list_conflicts(engine, session_id)] == ["duplicate"]
    assert rows(engine, "parent", lambda t: t.c.email == "race@example.com") == [
        {"id": 31, "name": "Racer master", "city": "M", "email": "race@example.com"}
    ]


def test_process_ended_between_load_commit_and_retirement(master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url)
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(P).where(P.c.id == 1).values(city="Once"))
    opened = open_replica(engine, replica)
    session_id = start_session(engine, opened)
    ctx = session_context(engine, session_id)
    detect_session(engine, ctx, opened.row)
    resolve_session(engine, ctx)
    opened.close()
    load_session(engine, ctx)  # committed; the file was never retired
    tables = ("parent", "child", "tagged", "sync_applied", "sync_session")
    before = [rows(engine, t) for t in tables]
    result = run_sync(engine, replica)
    assert (result.status, result.session_id) == ("done", session_id)
    assert [rows(engine, t) for t in tables] == before  # nothing applied twice (the master records the retirement)
    with pytest.raises(ReplicaError, match="already synchronised"):
        run_sync(engine, replica)


def test_failed_load_unfreezes_the_replica_so_its_owner_can_correct_it(master_url: str, tmp_path: Path) -> None:
    from sync_pipeline.engine.errors import SyncError

    engine = make_master(master_url)
    with engine.begin() as m:
        m.execute(sa.text("CREATE UNIQUE INDEX child_label_unique ON child (label)"))
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.insert(C).values(id=800, parent_id=1, label="C1"))  # the master refuses: label is unique
    before = (rows(engine, "parent"), rows(engine, "child"))
    with pytest.raises(SyncError, match="refused"):
        run_sync(engine, replica)
    assert (rows(engine, "parent"), rows(engine, "child")) == before
    assert [r["status"] for r in list_replicas(engine)] == ["failed"]
    with replica_engine(replica).begin() as r:  # not frozen any more
        r.execute(sa.update(C).where(C.c.id == 800).values(label="C800"))
    assert run_sync(engine, replica).status == "done"
    assert row(engine, "child", id=800)["label"] == "C800"


def test_writes_ordered_so_that_keys_hold_at_every_statement(master_url: str, tmp_path: Path) -> None:
    """Natural keys passed between rows and references to new or deleted parents, all in one load: the
    database checks unique indexes and FKs at every statement, so the load orders its batches."""
    engine = make_master(master_url, "master_wins")
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        # An update frees an e-mail address that a new row takes.
        r.execute(sa.update(P).where(P.c.id == 1).values(email="p1-old@example.com"))
        r.execute(sa.insert(P).values(id=41, name="Takes p1's address", city="L", email="p1@example.com"))
        # A delete frees an e-mail address that an update takes.
        r.execute(sa.delete(C).where(C.c.parent_id == 4))
        r.execute(sa.delete(P).where(P.c.id == 4))
        r.execute(sa.update(P).where(P.c.id == 3).values(email="p4@example.com"))
        # An existing row is pointed at a new parent.
        r.execute(sa.insert(P).values(id=40, name="New parent", city="L", email="p40@example.com"))
        r.execute(sa.update(C).where(C.c.id == 2).values(parent_id=40))
        # Children moved away from a parent, then the parent deleted.
        r.execute(sa.update(C).where(C.c.parent_id == 5).values(parent_id=1))
        r.execute(sa.delete(P).where(P.c.id == 5))
    result = run_sync(engine, replica)
    assert result.status == "done"
    assert list_conflicts(engine) == []
    emails = {r["id"]: r["email"] for r in rows(engine, "parent")}
    assert emails == {
        1: "p1-old@example.com",
        2: "p2@example.com",
        3: "p4@example.com",
        40: "p40@example.com",
        41: "p1@example.com",
    }
    parents = {r["id"]: r["parent_id"] for r in rows(engine, "child")}
    assert parents == {1: 1, 2: 40, 3: 3, 5: 1, 6: 1, 7: 2, 8: 3, 10: 1}


def test_natural_keys_swapped_between_two_rows(master_url: str, tmp_path: Path) -> None:
    """A cycle no order resolves: each row holds the address the other takes. The load writes NULL into
    one first (NULL may repeat in a unique index), then the new values."""
    engine = make_master(master_url, "master_wins")
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:  # the replica needs a spare value for the swap too
        r.execute(sa.update(P).where(P.c.id == 1).values(email="spare@example.com"))
        r.execute(sa.update(P).where(P.c.id == 2).values(email="p1@example.com"))
        r.execute(sa.update(P).where(P.c.id == 1).values(email="p2@example.com", city="Swapped"))
    assert run_sync(engine, replica).status == "done"
    assert {r["id"]: (r["email"], r["city"]) for r in rows(engine, "parent", lambda t: t.c.id <= 2)} == {
        1: ("p2@example.com", "Swapped"),
        2: ("p1@example.com", "Base"),
    }
    history = rows(engine, "sync_applied")
    assert sorted((h["op"], h["row_key"]) for h in history) == [("update", '{"id": 1}'), ("update", '{"id": 2}')]


def test_the_load_writes_one_batch_per_table_and_kind(master_url: str, tmp_path: Path) -> None:
    """The write order never falls back to a statement per row: many rows that depend on each other in
    the same way go in one batch."""
    engine = make_master(master_url, "master_wins")
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.insert(P).values(id=40, name="New parent", city="L", email="p40@example.com"))
        r.execute(sa.update(C).where(C.c.parent_id.in_([1, 2, 3])).values(parent_id=40))  # 6 rows to a new parent
        r.execute(sa.insert(C), [{"id": 100 + i, "parent_id": 40, "label": f"new {i}"} for i in range(5)])
        r.execute(sa.update(P).where(P.c.id.in_([1, 2])).values(city="Moved"))
        r.execute(sa.delete(C).where(C.c.parent_id == 5))
        r.execute(sa.delete(P).where(P.c.id == 5))
    statements: list[str] = []

    def record(conn: object, cursor: object, statement: str, *args: object) -> None:
        words = statement.split()
        if words[0] in ("INSERT", "UPDATE", "DELETE"):
            # The table written (a staging table of the set-based load, `sync_stage_…`, is a sync table).
            target = (words[1] if words[0] == "UPDATE" else words[2]).strip('"`,')
            if not target.startswith("sync_"):
                statements.append(f"{words[0]} {target}")

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        assert run_sync(engine, replica).status == "done"
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    business = sorted(s for s in statements if "parent" in s or "child" in s)
    assert business == [
        "DELETE child",
        "DELETE parent",
        "INSERT child",
        "INSERT parent",
        "UPDATE child",
        "UPDATE parent",
    ]


def test_bulk_insert_is_only_for_the_sync_tables(master_url: str) -> None:
    from sync_pipeline.engine.store import insert_rows

    engine = make_master(master_url)
    parent = TABLES["parent"]
    with engine.connect() as conn:
        before = conn.execute(sa.select(sa.func.count()).select_from(parent)).scalar_one()
        # COPY on PostgreSQL names the table: only our own sync tables may be named, on every dialect alike.
        with pytest.raises(ValueError, match="only for the sync tables"):
            insert_rows(conn, parent, [{"id": 99, "name": "x", "city": "x", "email": "x@example.com"}])
        conn.rollback()
        assert conn.execute(sa.select(sa.func.count()).select_from(parent)).scalar_one() == before


def test_rows_that_let_go_of_swapped_values_take_them_back_when_their_updates_are_dropped(tmp_path: Path) -> None:
    """Two rows swap natural keys while moving to a parent that will not exist in the master: the write
    order lets go of both values (NULL) to break the cycle, then the writer drops both updates; each row
    takes its value back, so the load verifies and the rows are as they were."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'master.db'}")
    metadata = sa.MetaData()
    sa.Table("parent", metadata, sa.Column("id", sa.Integer, primary_key=True))
    child = sa.Table(
        "child",
        metadata,
        sa.Column("code", sa.String(5), primary_key=True),
        sa.Column("nk", sa.String(5), unique=True),
        sa.Column("p_id", sa.Integer, sa.ForeignKey("parent.id")),
    )
    metadata.create_all(engine)
    rows = [{"code": "k3", "nk": "n0", "p_id": 1}, {"code": "k5", "nk": "n2", "p_id": 1}]
    with engine.begin() as conn:
        conn.execute(sa.insert(metadata.tables["parent"]).values(id=1))
        conn.execute(sa.insert(child), rows)
    plan = Plan(
        operations=[
            Operation(1, "child", "update", ("k3",), {"nk": "n2", "p_id": 9}, MasterRow(rows[0]), "change"),
            Operation(2, "child", "update", ("k5",), {"nk": "n0", "p_id": 9}, MasterRow(rows[1]), "change"),
        ],
        gone={("parent", (9,))},  # a local parent that will not be in the master
    )
    with engine.begin() as conn:
        infos = reflect_tables(conn, ["parent", "child"])
        result = execute_plan(conn, plan, infos)

    assert sorted(d[0] for d in result.dropped) == [1, 2]
    with engine.connect() as conn:
        assert [dict(r) for r in conn.execute(sa.select(child).order_by(child.c.code)).mappings()] == rows
