"""Throughput on the production stack: N replicas of C changes each, synced by the daemon and Celery workers
with 1, 2 and 4 runs at a time, against the engine's own work on the same data.

    .venv/bin/python bench/bench_concurrency.py                       # 20 replicas x 1,000 changes, 1/2/4
    .venv/bin/python bench/bench_concurrency.py --replicas 8 --concurrency 1,4

Needs PostgreSQL (master and Dagster storage) and RabbitMQ on 127.0.0.1 (deploy/README.md). For each
concurrency: a fresh master (a schema) and a fresh Dagster database, the daemon and one Celery worker
with that many processes, `max_concurrent_runs` = that many; the wall time runs from dropping every
replica into the inbox until the last one is retired. The engine's own work is `run_sync()` (no Dagster)
on an identical master and replicas, one after the other. Each replica edits rows of its own (60%
updates, 25% inserts, 15% deletes), so the loads do not wait for each other's rows.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sync_pipeline.engine import store  # noqa: E402
from sync_pipeline.engine.checkout import checkout  # noqa: E402
from sync_pipeline.engine.master import connect_master, init_master  # noqa: E402
from sync_pipeline.engine.session import run_sync  # noqa: E402
from sync_pipeline.engine.settings import parse_settings  # noqa: E402
from sync_pipeline_tests.conftest import fresh_master_url  # noqa: E402
from sync_pipeline_tests.production_stack import production_stack  # noqa: E402

SETTINGS = "modules:\n  stock:\n    policy: newest_wins\n    tables:\n      item: {}\n"


def build_master(url: str, replicas: int, changes: int) -> sa.Engine:
    engine = connect_master(url, must_exist=False)
    metadata = sa.MetaData()
    item = sa.Table(
        "item",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(60), nullable=False),
        sa.Column("qty", sa.Integer, nullable=False),
        sa.Column("note", sa.Text),
    )
    metadata.create_all(engine)
    rows = replicas * changes
    with engine.begin() as conn:
        conn.execute(sa.insert(item), [{"name": f"item {i}", "qty": i % 100, "note": None} for i in range(1, rows + 1)])
        conn.execute(sa.select(sa.func.setval(sa.func.pg_get_serial_sequence("item", "id"), rows)))
    init_master(engine, parse_settings(SETTINGS, "bench.yaml"))
    return engine


def edit(replica: Path, number: int, changes: int) -> None:
    """Replica `number` owns the rows number*changes+1 .. (number+1)*changes."""
    first = number * changes + 1
    updates, inserts = int(changes * 0.6), int(changes * 0.25)
    deletes = changes - updates - inserts
    with sqlite3.connect(replica) as conn:
        conn.executemany(
            "UPDATE item SET qty = qty + 1, note = ? WHERE id = ?", [(f"r{number}", first + k) for k in range(updates)]
        )
        conn.executemany("DELETE FROM item WHERE id = ?", [(first + updates + k,) for k in range(deletes)])
        conn.executemany(
            "INSERT INTO item (name, qty, note) VALUES (?, 1, ?)",
            [(f"new {number}.{k}", f"r{number}") for k in range(inserts)],
        )


def prepare(url: str, folder: Path, replicas: int, changes: int) -> tuple[sa.Engine, list[Path]]:
    engine = build_master(url, replicas, changes)
    paths = []
    for number in range(replicas):
        path = folder / f"r{number:02d}.db"
        checkout(engine, path, f"bench {number}")
        edit(path, number, changes)
        paths.append(path)
    return engine, paths


def engine_only(folder: Path, replicas: int, changes: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of `run_sync` for every replica, one after the other."""
    with fresh_master_url("postgresql", folder, prefix="bench_engine") as url:
        engine, paths = prepare(url, folder, replicas, changes)
        started, cpu = time.perf_counter(), time.process_time()
        for path in paths:
            assert run_sync(engine, path).status == "done"
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        engine.dispose()
    return elapsed, cpu


def breakdown(storage_url: str) -> dict[str, float]:
    """Seconds summed over every run, read from Dagster's own records in its PostgreSQL storage:
    `queued` (created to STARTING), `launch` (STARTING to the run process's START: the process starts and
    imports the code location), `run` (START to the end), and, within the runs, `steps` (each step's
    STEP_START to its STEP_SUCCESS in a worker: the engine's work, the checks, the step's I/O) and
    `dispatch` (the Celery executor submitting a step until the worker started it)."""
    engine = sa.create_engine(storage_url)
    metadata = sa.MetaData()
    runs = sa.Table("runs", metadata, autoload_with=engine)
    events = sa.Table("event_logs", metadata, autoload_with=engine)
    wanted = ["PIPELINE_STARTING", "PIPELINE_START", "STEP_START", "STEP_SUCCESS", "ENGINE_EVENT"]
    with engine.connect() as conn:
        created = {r.run_id: _epoch(r.create_timestamp) for r in conn.execute(sa.select(runs))}
        rows = conn.execute(
            sa.select(events.c.run_id, events.c.dagster_event_type, events.c.step_key, events.c.timestamp)
            .where(events.c.dagster_event_type.in_(wanted))
            .order_by(events.c.id)
        ).all()
        ends = dict(conn.execute(sa.select(runs.c.run_id, runs.c.end_time)).all())
    engine.dispose()
    total = {"runs": float(len(created)), "queued": 0.0, "launch": 0.0, "run": 0.0, "steps": 0.0, "dispatch": 0.0}
    first: dict[tuple[str, str | None, str], float] = {}
    for run_id, kind, step, stamp in rows:
        first.setdefault((run_id, step, kind), _epoch(stamp))
    for run_id, created_at in created.items():
        starting, start = first.get((run_id, None, "PIPELINE_STARTING")), first.get((run_id, None, "PIPELINE_START"))
        if starting and start:
            total["queued"] += starting - created_at
            total["launch"] += start - starting
            if ends.get(run_id):
                total["run"] += ends[run_id] - start
    for (run_id, step, kind), stamp in first.items():
        if step and kind == "STEP_START":
            done = first.get((run_id, step, "STEP_SUCCESS"))
            submitted = first.get((run_id, step, "ENGINE_EVENT"))  # the first: "Submitting celery task"
            if done:
                total["steps"] += done - stamp
            if submitted:
                total["dispatch"] += stamp - submitted
    return total


def _epoch(naive_utc: datetime) -> float:
    """Dagster stores event and creation times as naive UTC datetimes (runs.end_time is an epoch time)."""
    return naive_utc.replace(tzinfo=UTC).timestamp()


def on_stack(folder: Path, replicas: int, changes: int, concurrency: int) -> tuple[float, dict[str, float]]:
    """(wall seconds from the drop to the last retirement, the run machinery's seconds (`breakdown`))."""
    inbox = folder / "inbox"
    inbox.mkdir()
    with fresh_master_url("postgresql", folder, prefix="bench_stack") as url:
        engine, paths = prepare(url, folder, replicas, changes)
        with production_stack(folder, url, inbox, workers=1, concurrency=concurrency, max_runs=concurrency) as stack:
            time.sleep(20)  # the daemon and the worker start (not counted)
            started = time.perf_counter()
            for path in paths:
                target = inbox / path.name
                os.replace(path, target)
                os.utime(target, (time.time() - 60, time.time() - 60))
            while True:
                with engine.connect() as conn:
                    left = conn.execute(
                        sa.select(sa.func.count())
                        .select_from(store.sync_replica)
                        .where(store.sync_replica.c.status != "retired")
                    ).scalar()
                if not left:
                    break
                if stack.dead():
                    raise SystemExit(f"stack died: {stack.dead()}\n{stack.log_tail('daemon')}")
                time.sleep(1)
            wall = time.perf_counter() - started
            time.sleep(15)  # the last protocol is written after the retirement
            figures = breakdown(stack.env["DAGSTER_POSTGRES_URL"])
        engine.dispose()
    figures["cpu"] = float((folder / "logs" / "cpu_seconds").read_text())  # the stack's processes, all of it
    return wall, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=20)
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--concurrency", default="1,2,4")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    with tempfile.TemporaryDirectory(prefix="bench_concurrency_") as tmp:
        root = Path(tmp)
        (root / "engine").mkdir()
        engine_seconds, engine_cpu = engine_only(root / "engine", args.replicas, args.changes)
        print(f"engine alone: {engine_seconds:.1f} s, {engine_cpu:.1f} s CPU, load {os.getloadavg()}", flush=True)
        results = {}
        for level in levels:
            folder = root / f"c{level}"
            folder.mkdir()
            results[level] = on_stack(folder, args.replicas, args.changes, level)
            # each level as it ends, with the machine's load: a long run keeps what it measured
            print(
                f"{level} at a time: {results[level][0]:.1f} s {results[level][1]} load {os.getloadavg()}", flush=True
            )
    base = results[min(levels)][0]
    per = args.replicas
    print(f"\n{args.replicas} replicas x {args.changes} changes; engine alone, in a row: {engine_seconds:.1f} s")
    print(f"| runs at a time | wall time (s) | × {min(levels)} at a time | wall per sync (s) |")
    print("|---|---|---|---|")
    for level in levels:
        wall = results[level][0]
        print(f"| {level} | {wall:.1f} | {wall / base:.2f} | {wall / per:.1f} |")
    print(f"\nper sync (two runs), seconds; engine alone: {engine_seconds / per:.2f} ({engine_cpu / per:.2f} CPU)")
    print("| runs at a time | queued | run process start | run | of which steps | of which dispatch | CPU |")
    print("|---|---|---|---|---|---|---|")
    for level in levels:
        f = results[level][1]
        print(
            f"| {level} | {f['queued'] / per:.1f} | {f['launch'] / per:.1f} | {f['run'] / per:.1f} "
            f"| {f['steps'] / per:.1f} | {f['dispatch'] / per:.1f} | {f['cpu'] / per:.1f} |"
        )


if __name__ == "__main__":
    main()
