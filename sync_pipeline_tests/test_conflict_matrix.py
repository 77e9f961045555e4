"""Every conflict kind x every policy, on SQLite, PostgreSQL and MariaDB, asserting the master's final rows.

Each scenario makes a local edit and a master edit that produce one conflict kind, and says what the
master must hold when the master's side is taken and when the local side is taken. Each policy then
maps to one of the two: master_wins and local_wins directly; newest_wins by which side edited last;
manual by the decision a person records.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync_pipeline.engine.queries import list_conflicts
from sync_pipeline.engine.session import decide, pending_of, run_sync
from sync_pipeline_tests.helpers import TABLES, make_master, make_replica, pause, replica_engine, row, rows
from sync_pipeline_tests.masters import backend_on_all_masters  # noqa: F401 - `backend` over all three masters

P, C, T = TABLES["parent"], TABLES["child"], TABLES["tagged"]

Edit = Callable[[sa.Connection], None]
Check = Callable[[Engine], None]


@dataclass
class Scenario:
    kind: str
    local: Edit
    master: Edit
    when_master: Check
    when_local: Check


def _update_update() -> Scenario:
    def local(c: sa.Connection) -> None:
        c.execute(sa.update(P).where(P.c.id == 1).values(city="Local city", name="Local name"))

    def master(c: sa.Connection) -> None:
        c.execute(sa.update(P).where(P.c.id == 1).values(city="Master city"))

    def when_master(e: Engine) -> None:
        # The conflicting field keeps the master's value; the other local field still applies.
        assert row(e, "parent", id=1) == {
            "id": 1,
            "name": "Local name",
            "city": "Master city",
            "email": "p1@example.com",
        }

    def when_local(e: Engine) -> None:
        assert row(e, "parent", id=1) == {
            "id": 1,
            "name": "Local name",
            "city": "Local city",
            "email": "p1@example.com",
        }

    return Scenario("update_update", local, master, when_master, when_local)


def _update_delete() -> Scenario:
    def local(c: sa.Connection) -> None:
        c.execute(sa.update(C).where(C.c.id == 7).values(label="edited offline"))

    def master(c: sa.Connection) -> None:
        c.execute(sa.delete(C).where(C.c.id == 7))

    def when_master(e: Engine) -> None:
        assert row(e, "child", id=7) is None

    def when_local(e: Engine) -> None:
        # Re-inserted: base values plus the local change.
        assert row(e, "child", id=7) == {"id": 7, "parent_id": 2, "label": "edited offline", "amount": Decimal("10.50")}

    return Scenario("update_delete", local, master, when_master, when_local)


def _delete_update() -> Scenario:
    def local(c: sa.Connection) -> None:
        c.execute(sa.delete(C).where(C.c.id == 8))

    def master(c: sa.Connection) -> None:
        c.execute(sa.update(C).where(C.c.id == 8).values(amount=Decimal("99.99")))

    def when_master(e: Engine) -> None:
        assert row(e, "child", id=8) == {"id": 8, "parent_id": 3, "label": "C8", "amount": Decimal("99.99")}

    def when_local(e: Engine) -> None:
        assert row(e, "child", id=8) is None

    return Scenario("delete_update", local, master, when_master, when_local)


def _insert_insert() -> Scenario:
    def local(c: sa.Connection) -> None:
        c.execute(sa.insert(T).values(code="Z", version=2, title="lokal ✓", valid_from=dt.date(2026, 1, 1)))

    def master(c: sa.Connection) -> None:
        c.execute(sa.insert(T).values(code="Z", version=2, title="zentral", valid_from=None))

    def when_master(e: Engine) -> None:
        assert row(e, "tagged", code="Z", version=2)["title"] == "zentral"

    def when_local(e: Engine) -> None:
        got = row(e, "tagged", code="Z", version=2)
        assert got["title"] == "lokal ✓" and str(got["valid_from"]) == "2026-01-01"

    return Scenario("insert_insert", local, master, when_master, when_local)


def _duplicate() -> Scenario:
    def local(c: sa.Connection) -> None:
        new_id = c.execute(
            sa.insert(P).values(name="Dup local", city="L", email="dup@example.com").returning(P.c.id)
        ).scalar_one()
        c.execute(sa.insert(C).values(id=500, parent_id=new_id, label="child of dup", amount=Decimal("5.00")))

    def master(c: sa.Connection) -> None:
        c.execute(sa.insert(P).values(id=40, name="Dup master", city="M", email="dup@example.com"))

    def check(e: Engine, name: str, city: str) -> None:
        dups = rows(e, "parent", lambda t: t.c.email == "dup@example.com")
        assert [(d["id"], d["name"], d["city"]) for d in dups] == [(40, name, city)]
        # The replica's child follows the master's key in both cases.
        assert row(e, "child", id=500)["parent_id"] == 40

    return Scenario(
        "duplicate", local, master, lambda e: check(e, "Dup master", "M"), lambda e: check(e, "Dup local", "L")
    )


def _orphan() -> Scenario:
    def local(c: sa.Connection) -> None:
        c.execute(sa.insert(C).values(id=600, parent_id=4, label="new for P4", amount=None))

    def master(c: sa.Connection) -> None:
        c.execute(sa.delete(C).where(C.c.parent_id == 4))
        c.execute(sa.delete(P).where(P.c.id == 4))

    def when_master(e: Engine) -> None:
        assert row(e, "child", id=600) is None and row(e, "parent", id=4) is None

    def when_local(e: Engine) -> None:
        # The parent is re-created from its base values, then the child goes in.
        assert row(e, "parent", id=4) == {"id": 4, "name": "P4", "city": "Base", "email": "p4@example.com"}
        assert row(e, "child", id=600)["parent_id"] == 4

    return Scenario("orphan", local, master, when_master, when_local)


SCENARIOS = {
    s.kind: s for s in (_update_update(), _update_delete(), _delete_update(), _insert_insert(), _duplicate(), _orphan())
}

# policy -> (edit order, which side the master must end up with)
POLICIES = {
    "master_wins": ("local_first", "master"),
    "local_wins": ("local_first", "local"),
    "newest_wins-master_later": ("local_first", "master"),
    "newest_wins-local_later": ("master_first", "local"),
    "manual-take_master": ("local_first", "master"),
    "manual-take_local": ("local_first", "local"),
}


@pytest.mark.parametrize("policy_case", list(POLICIES))
@pytest.mark.parametrize("kind", list(SCENARIOS))
def test_conflict_kind_under_policy(kind: str, policy_case: str, master_url: str, tmp_path: Path) -> None:
    scenario = SCENARIOS[kind]
    policy = policy_case.split("-")[0]
    order, expected_side = POLICIES[policy_case]
    engine = make_master(master_url, policy)
    replica = make_replica(engine, tmp_path)
    local_db = replica_engine(replica)

    def edit_local() -> None:
        with local_db.begin() as c:
            scenario.local(c)

    def edit_master() -> None:
        with engine.begin() as c:
            scenario.master(c)

    first, second = (edit_local, edit_master) if order == "local_first" else (edit_master, edit_local)
    first()
    pause()
    second()

    result = run_sync(engine, replica)
    conflicts = list_conflicts(engine, result.session_id)
    assert [c["kind"] for c in conflicts] == [kind]
    if policy == "manual":
        assert result.status == "waiting" and result.pending == {"core": 1}
        choice = policy_case.split("take_")[1]
        decide(engine, conflicts[0]["id"], choice, by="Quinn Reviewer")
        assert pending_of(engine, result.session_id) == {}
        result = run_sync(engine, replica)
    assert result.status == "done", result
    (scenario.when_local if expected_side == "local" else scenario.when_master)(engine)
    decided = list_conflicts(engine, result.session_id)[0]["decision"]
    assert decided["rule"] == ("person" if policy == "manual" else policy)
    if policy == "manual":
        assert decided["by"] == "Quinn Reviewer"
