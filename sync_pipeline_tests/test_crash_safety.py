"""Crash safety: the sync process is killed with SIGKILL at every fault point of a session.

A driver script (or the real `sync-pipeline` command) runs the sync in a subprocess with
`SYNC_FAULT=point[:N]`; `sync_pipeline.engine.faults.checkpoint` kills the process the N-th time the
point is reached: no `finally`, no rollback by Python, no exit handler. After every kill:

- the master's business tables equal exactly the state before the load (kill before the load's
  commit) or exactly the state after a complete load (kill after it), never anything in between;
- nothing of the load is recorded as applied unless the load committed.

After the last kill of a case a clean `sync` finishes the session: the master equals the reference
outcome (the same scenario synchronised without faults), every row was applied once (the applied
history equals the reference's), there is exactly one session, and the replica is retired exactly
once: on the master and in its file; a further sync is refused and writes nothing.

Where a point is reached several times (one per change-log entry, per table, per conflict, per
batch of writes), the kills are aimed by counting how often the fault-free reference run reaches it.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync_pipeline.engine import faults, store
from sync_pipeline.engine.errors import ReplicaError
from sync_pipeline.engine.session import run_sync
from sync_pipeline_tests.conftest import fresh_master_url
from sync_pipeline_tests.helpers import TABLES, make_master, make_replica, master_state, replica_engine
from sync_pipeline_tests.masters import backend_on_all_masters  # noqa: F401 - `backend` over all three masters

P, C, T = TABLES["parent"], TABLES["child"], TABLES["tagged"]
BUSINESS = ("parent", "child", "tagged")
KILLED = -signal.SIGKILL

DRIVER_SYNC = """
import sys
from sync_pipeline.engine.master import connect_master
from sync_pipeline.engine.session import run_sync
result = run_sync(connect_master(sys.argv[1]), sys.argv[2])
print(result.status)
"""

DRIVER_DECIDE = """
import sys
from sync_pipeline.engine.master import connect_master
from sync_pipeline.engine.session import decide, decide_module
engine = connect_master(sys.argv[1])
if sys.argv[2] == "one":
    decide(engine, int(sys.argv[3]), sys.argv[4], "crash-tester")
else:
    decide_module(engine, sys.argv[3], "core", sys.argv[4], "crash-tester")
"""

DRIVER_PROTOCOL = """
import sys
from sync_pipeline.engine.master import connect_master
from sync_pipeline.engine.protocol import build_protocol
build_protocol(connect_master(sys.argv[1]), sys.argv[2])
"""

# Points reached before the load's commit leave the master as before the load; the rest after it.
AFTER_COMMIT = {"retire", "protocol"}


# ------------------------------------------------------------------------------------------------
# The scenario: every kind of write the load makes, and a conflict of each automatic kind
# ------------------------------------------------------------------------------------------------


def local_edits(replica: Path) -> None:
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(P).where(P.c.id == 1).values(city="Local city"))
        r.execute(sa.update(P).where(P.c.id == 2).values(name="Local name"))  # update_update
        r.execute(sa.update(P).where(P.c.id == 3).values(city="Local three"))  # update_delete
        for i in (1, 2, 4, 6, 7, 9):  # not 3 and 8: the master deletes them with their parent
            r.execute(sa.update(C).where(C.c.id == i).values(label=f"L{i}"))
        new = r.execute(  # id 6 locally; the master gives 6 to its own new row: remapped
            sa.insert(P).values(name="Local new", city="L", email="new@local.example").returning(P.c.id)
        ).scalar_one()
        children = [{"id": 101, "parent_id": new, "label": "a"}, {"id": 102, "parent_id": new, "label": None}]
        r.execute(sa.insert(C), children)
        dup = r.execute(  # the master gets the same email meanwhile: duplicate
            sa.insert(P).values(id=40, name="Dup local", city="L", email="dup@example.com").returning(P.c.id)
        ).scalar_one()
        r.execute(sa.insert(C).values(id=103, parent_id=dup, label="of dup"))
        r.execute(sa.insert(T), [{"code": "B", "version": 1, "title": "local B"}])  # insert_insert
        r.execute(sa.insert(T), [{"code": "C", "version": v, "title": f"c{v}"} for v in range(1, 4)])
        r.execute(sa.delete(C).where(C.c.id.in_([5, 10])))
        r.execute(sa.delete(P).where(P.c.id == 5))


def master_edits(engine: Engine) -> None:
    with engine.begin() as m:
        m.execute(sa.update(P).where(P.c.id == 2).values(name="Master name"))
        m.execute(sa.delete(C).where(C.c.parent_id == 3))
        m.execute(sa.delete(P).where(P.c.id == 3))
        m.execute(sa.insert(P).values(name="Master new", city="M", email="mn@example.com"))
        m.execute(sa.insert(P).values(id=77, name="Dup master", city="M", email="dup@example.com"))
        m.execute(sa.insert(T).values(code="B", version=1, title="master B"))


def business_state(engine: Engine, known_parent_ids: set[int]) -> dict[str, list[tuple[Any, ...]]]:
    """The business tables, with keys the master generated during the sync made comparable.

    A remapped row gets whatever id the sequence hands out; a killed transaction on PostgreSQL has
    used some up. Such ids are replaced by the row's email (unique), in the row and in references.
    """
    with engine.connect() as conn:
        parents = [dict(r) for r in conn.execute(sa.select(P)).mappings()]
        children = [dict(r) for r in conn.execute(sa.select(C)).mappings()]
        tagged = [tuple(r) for r in conn.execute(sa.select(T))]
    names = {p["id"]: (p["id"] if p["id"] in known_parent_ids else f"new:{p['email']}") for p in parents}
    return {
        "parent": sorted((repr(names[p["id"]]), p["name"], p["city"], p["email"]) for p in parents),
        "child": sorted(
            (c["id"], repr(names.get(c["parent_id"], c["parent_id"])), c["label"], str(c["amount"])) for c in children
        ),
        "tagged": sorted(map(repr, tagged)),
    }


def parent_ids(engine: Engine) -> set[int]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(P.c.id)).scalars())


def sync_rows(engine: Engine, table: sa.Table, **where: Any) -> list[dict[str, Any]]:
    query = sa.select(table)
    for name, value in where.items():
        query = query.where(table.c[name] == value)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def applied_history(engine: Engine) -> Counter[tuple[str, str, str]]:
    return Counter((r["table_name"], r["op"], r["source"]) for r in sync_rows(engine, store.sync_applied))


def manifest_status(replica: Path) -> str:
    conn = sqlite3.connect(replica)
    try:
        return json.loads(conn.execute("SELECT value FROM _sync_manifest WHERE key = 'status'").fetchone()[0])
    finally:
        conn.close()


@dataclass
class Reference:
    after: dict[str, list[tuple[Any, ...]]]
    applied: Counter[tuple[str, str, str]]
    reached: dict[str, int]  # how often a fault-free sync reaches each point


_references: dict[str, Reference] = {}


def reference(backend: str, folder: Path, monkeypatch: pytest.MonkeyPatch) -> Reference:
    """The scenario synchronised without faults (once per backend), counting the fault points."""
    if backend not in _references:
        with fresh_master_url(backend, folder) as url:
            engine = make_master(url, "local_wins")
            replica = make_replica(engine, folder)
            local_edits(replica)
            master_edits(engine)
            known = parent_ids(engine)
            faults.reset()
            with monkeypatch.context() as patch:
                patch.setenv("SYNC_FAULT", "count-only")  # counts, never matches a point
                result = run_sync(engine, replica)
            reached = faults.reached()
            faults.reset()
            assert result.status == "done", result
            # Remapped: the new key of "Local new" and the duplicate's key (as the protocol lists them).
            assert result.modules["core"]["conflicts"] == 4 and result.modules["core"]["remapped"] == 2
            _references[backend] = Reference(business_state(engine, known), applied_history(engine), reached)
            engine.dispose()
    return _references[backend]


@dataclass
class Case:
    engine: Engine
    url: str
    replica: Path
    known: set[int]
    before: dict[str, list[tuple[Any, ...]]]
    ref: Reference
    kills: int = 0


def prepare(master_url: str, backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Case:
    ref = reference(backend, tmp_path, monkeypatch)
    engine = make_master(master_url, "local_wins")
    replica = make_replica(engine, tmp_path)
    local_edits(replica)
    master_edits(engine)
    known = parent_ids(engine)
    return Case(engine, master_url, replica, known, business_state(engine, known), ref)


def run_killed(case: Case, spec: str, driver: str = DRIVER_SYNC, *args: str) -> None:
    """Run a driver in a subprocess with SYNC_FAULT=spec; it must die by SIGKILL."""
    arguments = args or (str(case.replica),)
    env = {**os.environ, "SYNC_FAULT": spec}
    done = subprocess.run(
        [sys.executable, "-c", driver, case.url, *arguments], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == KILLED, f"{spec}: not killed (exit {done.returncode})\n{done.stdout}\n{done.stderr}"
    case.kills += 1


def check_after_kill(case: Case, point: str) -> None:
    state = business_state(case.engine, case.known)
    replica_record = sync_rows(case.engine, store.sync_replica)[0]
    sessions = sync_rows(case.engine, store.sync_session)
    if point in AFTER_COMMIT:
        assert state == case.ref.after, f"killed at {point} after the commit: the master is not the loaded state"
        assert [s["status"] for s in sessions] == ["done"]
        assert replica_record["status"] == "retired"
        assert applied_history(case.engine) == case.ref.applied
    else:
        assert state == case.before, f"killed at {point} before the commit: the master's tables changed"
        assert sync_rows(case.engine, store.sync_applied) == []
        assert len(sessions) <= 1 and all(s["status"] != "done" for s in sessions)
        assert replica_record["status"] != "retired" and replica_record["retired_at"] is None
    # The replica file survived the kill: still a replica (a hot journal is rolled back on open).
    assert manifest_status(case.replica) in ("open", "frozen", "retired")


def finish_and_check(case: Case) -> None:
    """A clean sync finishes the session: reference outcome, applied once, retired exactly once."""
    result = run_sync(case.engine, case.replica)
    assert result.status == "done", result
    assert business_state(case.engine, case.known) == case.ref.after
    assert applied_history(case.engine) == case.ref.applied  # nothing applied twice
    (session,) = sync_rows(case.engine, store.sync_session)
    assert session["status"] == "done" and session["session_id"] == result.session_id
    (replica_record,) = sync_rows(case.engine, store.sync_replica)
    assert replica_record["status"] == "retired" and replica_record["retired_at"] == session["finished_at"]
    assert manifest_status(case.replica) == "retired"
    before = master_state(case.engine)
    with pytest.raises(ReplicaError, match="already synchronised"):
        run_sync(case.engine, case.replica)
    assert master_state(case.engine) == before
    with pytest.raises(sa.exc.IntegrityError, match="retired"), replica_engine(case.replica).begin() as r:
        r.execute(sa.update(P).where(P.c.id == 1).values(city="after retirement"))


def aim(ref: Reference, point: str, which: str) -> int:
    """The N of `point:N`: 'first', 'middle', 'last' or a number, checked against the reference."""
    count = ref.reached.get(point, 0)
    assert count >= 1, f"the reference sync never reaches {point}: {ref.reached}"
    n = {"first": 1, "middle": (count + 1) // 2, "last": count}.get(which)
    if n is None:
        n = int(which)
        assert n <= count, f"{point} is reached {count} times, not {n}"
    return n


# ------------------------------------------------------------------------------------------------
# One kill, then a clean sync
# ------------------------------------------------------------------------------------------------

SINGLE_KILLS = [
    ("freeze", "first"),  # freezing the replica file, before its COMMIT
    ("extract", "first"),
    ("extract", "middle"),
    ("extract", "last"),
    ("extract_store", "first"),
    ("detect", "first"),
    ("detect", "last"),
    ("detect_store", "first"),
    ("decide", "first"),
    ("decide", "last"),
    ("load_begin", "first"),
    ("load_write", "first"),
    ("load_write", "middle"),
    ("load_write", "last"),
    ("load_commit", "first"),
    ("retire", "first"),  # committed on the master, the file not retired yet
    ("freeze", "last"),  # retiring the replica file, before its COMMIT
]


@pytest.mark.parametrize(("point", "which"), SINGLE_KILLS, ids=[f"{p}-{w}" for p, w in SINGLE_KILLS])
def test_killed_once_then_synced(
    point: str, which: str, backend: str, master_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = prepare(master_url, backend, tmp_path, monkeypatch)
    run_killed(case, f"{point}:{aim(case.ref, point, which)}")
    check_after_kill(case, "retire" if (point, which) == ("freeze", "last") else point)
    finish_and_check(case)
    assert case.kills == 1


# ------------------------------------------------------------------------------------------------
# Killed again and again: every rerun dies at the next point, then a clean sync
# ------------------------------------------------------------------------------------------------


def test_killed_at_every_change_log_entry(
    backend: str, master_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = prepare(master_url, backend, tmp_path, monkeypatch)
    entries = aim(case.ref, "extract", "last")
    for n in range(1, entries + 1, 2):
        run_killed(case, f"extract:{n}")
        check_after_kill(case, "extract")
        # The replica stays frozen after a kill during extraction until the next sync runs.
        assert manifest_status(case.replica) == "frozen"
    finish_and_check(case)
    assert case.kills >= 10


def test_killed_at_every_write_of_the_load(
    backend: str, master_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = prepare(master_url, backend, tmp_path, monkeypatch)
    for n in range(1, aim(case.ref, "load_write", "last") + 1):
        run_killed(case, f"load_write:{n}")
        check_after_kill(case, "load_write")
        (session,) = sync_rows(case.engine, store.sync_session)
        assert session["status"] == "loading"  # the rerun goes straight back to the load
    finish_and_check(case)
    assert case.kills >= 8


def test_killed_at_every_policy_decision_and_table_detected(
    backend: str, master_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = prepare(master_url, backend, tmp_path, monkeypatch)
    for n in range(1, aim(case.ref, "detect", "last") + 1):
        run_killed(case, f"detect:{n}")
        check_after_kill(case, "detect")
    for n in range(1, aim(case.ref, "decide", "last") + 1):
        run_killed(case, f"decide:{n}")
        check_after_kill(case, "decide")
        assert sync_rows(case.engine, store.sync_decision) == []  # all of a policy's decisions, or none
    finish_and_check(case)
    assert case.kills >= 7


def test_killed_at_each_step_of_one_session_in_turn(
    backend: str, master_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = prepare(master_url, backend, tmp_path, monkeypatch)
    steps = [
        ("freeze", "first"),
        ("extract", "middle"),
        ("extract_store", "first"),
        ("detect", "middle"),
        ("detect_store", "first"),
        ("decide", "middle"),
        ("load_begin", "first"),
        ("load_write", "middle"),
        ("load_commit", "first"),
        ("retire", "first"),
    ]
    for point, which in steps:
        run_killed(case, f"{point}:{aim(case.ref, point, which)}")
        check_after_kill(case, point)
    # The master retired the replica; the rerun only retires the file, and dies doing that too.
    run_killed(case, "freeze:1")
    check_after_kill(case, "retire")
    assert manifest_status(case.replica) == "frozen"
    finish_and_check(case)
    assert case.kills == len(steps) + 1


# ------------------------------------------------------------------------------------------------
# Re-detection (the master moved after detection), a person's decisions, the protocol, the CLI
# ------------------------------------------------------------------------------------------------


def test_killed_while_stale_rows_are_detected_again(
    backend: str, master_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sync_pipeline.engine.replica import open_replica
    from sync_pipeline.engine.session import detect_session, resolve_session, session_context, start_session

    engine = make_master(master_url, "local_wins")
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(P).where(P.c.id == 1).values(city="Local"))
        r.execute(sa.update(C).where(C.c.id == 2).values(label="Local"))
    opened = open_replica(engine, replica)
    session_id = start_session(engine, opened)
    ctx = session_context(engine, session_id)
    detect_session(engine, ctx, opened.row)
    resolve_session(engine, ctx)
    opened.close()
    with engine.begin() as m:  # after detection: the load finds the row stale and detects it again
        m.execute(sa.update(P).where(P.c.id == 1).values(city="Master after detection"))
    known = parent_ids(engine)
    case = Case(engine, master_url, replica, known, business_state(engine, known), Reference({}, Counter(), {}))
    for spec in ("detect:1", "detect_store:1", "decide:1", "load_write:1"):
        run_killed(case, spec)
        assert business_state(engine, known) == case.before
        assert sync_rows(engine, store.sync_applied) == []
    result = run_sync(engine, replica)
    assert result.status == "done"
    with engine.connect() as conn:
        assert conn.execute(sa.select(P.c.city).where(P.c.id == 1)).scalar_one() == "Local"  # local_wins
        assert conn.execute(sa.select(C.c.label).where(C.c.id == 2)).scalar_one() == "Local"
    kinds = [c["kind"] for c in sync_rows(engine, store.sync_conflict)]
    assert kinds == ["update_update"]  # the stale row became a conflict, once
    assert Counter(r["op"] for r in sync_rows(engine, store.sync_applied)) == {"update": 2}
    assert manifest_status(replica) == "retired" and case.kills == 4


def test_killed_while_a_person_decides(backend: str, master_url: str, tmp_path: Path) -> None:
    engine = make_master(master_url, "manual")
    replica = make_replica(engine, tmp_path)
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(P).where(P.c.id.in_([1, 2])).values(city="Local"))
    with engine.begin() as m:
        m.execute(sa.update(P).where(P.c.id.in_([1, 2])).values(city="Master"))
    assert run_sync(engine, replica).status == "waiting"
    conflicts = sync_rows(engine, store.sync_conflict)
    known = parent_ids(engine)
    case = Case(engine, master_url, replica, known, business_state(engine, known), Reference({}, Counter(), {}))
    session_id = conflicts[0]["session_id"]

    run_killed(case, "decide_person:1", DRIVER_DECIDE, "one", str(conflicts[0]["conflict_id"]), "local")
    assert sync_rows(engine, store.sync_decision) == [] and {c["status"] for c in conflicts} == {"pending"}
    run_killed(case, "decide_person:2", DRIVER_DECIDE, "module", session_id, "local")  # bulk: all or nothing
    assert sync_rows(engine, store.sync_decision) == []
    assert [s["status"] for s in sync_rows(engine, store.sync_session)] == ["waiting"]
    assert business_state(engine, known) == case.before

    from sync_pipeline.engine.session import decide_module

    assert decide_module(engine, session_id, "core", "local", "crash-tester") == 2
    run_killed(case, "load_write:1")
    assert business_state(engine, known) == case.before
    result = run_sync(engine, replica)
    assert result.status == "done"
    with engine.connect() as conn:
        assert set(conn.execute(sa.select(P.c.city).where(P.c.id.in_([1, 2]))).scalars()) == {"Local"}
    assert len(sync_rows(engine, store.sync_decision)) == 2  # one per conflict, none lost or doubled
    assert case.kills == 3


def test_killed_while_the_protocol_is_written(
    backend: str, master_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = prepare(master_url, backend, tmp_path, monkeypatch)
    result = run_sync(case.engine, case.replica)
    before = master_state(case.engine)
    run_killed(case, "protocol:1", DRIVER_PROTOCOL, str(result.session_id))
    check_after_kill(case, "protocol")
    assert master_state(case.engine) == before  # writing a protocol only reads
    from sync_pipeline.engine.protocol import build_protocol

    assert build_protocol(case.engine, str(result.session_id)).session.status == "done"
    assert manifest_status(case.replica) == "retired"


CLI_KILLS = ["extract:2", "detect:2", "load_write:2", "load_commit:1"]


def test_the_sync_command_killed_and_run_again(backend: str, master_url: str, tmp_path: Path) -> None:
    """The real `sync-pipeline sync` command, killed at points every way of running a session reaches."""
    engine = make_master(master_url, "local_wins")
    replica = make_replica(engine, tmp_path)
    local_edits(replica)
    master_edits(engine)
    known = parent_ids(engine)
    before = business_state(engine, known)
    # What the `sync-pipeline` console script runs.
    entry = "from sync_pipeline.cli import main; main()"
    command = [sys.executable, "-c", entry, "sync", "--master", master_url, "--replica", str(replica)]
    for spec in CLI_KILLS:
        done = subprocess.run(
            command, env={**os.environ, "SYNC_FAULT": spec}, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == KILLED, f"{spec}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
        assert business_state(engine, known) == before
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert manifest_status(replica) == "retired"
    assert [s["status"] for s in sync_rows(engine, store.sync_session)] == ["done"]
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already synchronised" in again.stderr + again.stdout


def test_checkpoint_without_fault_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNC_FAULT", raising=False)
    faults.reset()
    for name in faults.POINTS:
        faults.checkpoint(name)
    assert faults.reached() == {}
    monkeypatch.setenv("SYNC_FAULT", "load_write:3")
    faults.checkpoint("load_write")
    faults.checkpoint("load_write")  # the third time would kill this process
    faults.checkpoint("extract")
    assert faults.reached() == {"load_write": 2, "extract": 1}
    faults.reset()


def planned_kills_per_backend() -> int:
    """Kills one backend's tests make with the reference scenario (each test asserts its own)."""
    single = len(SINGLE_KILLS)
    chains = 10 + 8 + 7 + 11  # lower bounds asserted by the chain tests
    return single + chains + 4 + 3 + 1 + len(CLI_KILLS)


def test_at_least_fifty_kills_per_backend() -> None:
    assert planned_kills_per_backend() >= 50
