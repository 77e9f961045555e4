"""Benchmarks: sync_pipeline against a raw baseline measured in the same run.

    .venv/bin/python bench/bench_sync.py --quick          # small sizes, under a minute
    .venv/bin/python bench/bench_sync.py                  # full sizes (1M-row master, 10k changes)
    .venv/bin/python bench/bench_sync.py --sqlite         # SQLite master instead of PostgreSQL
    .venv/bin/python bench/bench_sync.py --mariadb        # MariaDB master (raw baseline: mysqlclient)
    .venv/bin/python bench/bench_sync.py --profile        # where one sync's time goes (cProfile)

Each figure is the median of --repeat runs; the table printed at the end has the figure, ours, the
baseline, the ratio, the target and whether it is met. Timings are wall-clock seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sync_pipeline.engine.checkout import checkout  # noqa: E402
from sync_pipeline.engine.detect import detect_conflicts  # noqa: E402
from sync_pipeline.engine.dialects import impl_for  # noqa: E402
from sync_pipeline.engine.extract import extract_changes  # noqa: E402
from sync_pipeline.engine.master import connect_master, init_master  # noqa: E402
from sync_pipeline.engine.replica import open_replica  # noqa: E402
from sync_pipeline.engine.schema import reflect_tables  # noqa: E402
from sync_pipeline.engine.session import run_sync  # noqa: E402
from sync_pipeline.engine.settings import parse_settings  # noqa: E402

PG_URL = os.environ.get("SYNC_BENCH_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
MARIADB_URL = os.environ.get("SYNC_BENCH_MARIADB_URL", "mysql+mysqldb://root@127.0.0.1:3306/test?charset=utf8mb4")
# --mariadb: the server masters are MariaDB databases instead of PostgreSQL schemas (set by main()).
ON_MARIADB = {"on": False}
SETTINGS = "modules:\n  stock:\n    policy: newest_wins\n    tables:\n      item: {}\n"


def item_table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "item",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(60), nullable=False),
        sa.Column("qty", sa.Integer, nullable=False),
        sa.Column("price", sa.Numeric(10, 2), nullable=False),
        sa.Column("updated_on", sa.Date),
        sa.Column("note", sa.Text),
    )


@dataclass
class Master:
    url: str
    engine: sa.Engine
    schema: str | None
    rows: int
    database: str | None = None  # a MariaDB master's database

    def drop(self) -> None:
        self.engine.dispose()
        if self.database:
            admin = sa.create_engine(MARIADB_URL)
            with admin.begin() as conn:  # a generated name
                conn.exec_driver_sql(f"DROP DATABASE {admin.dialect.identifier_preparer.quote(self.database)}")
            admin.dispose()
        if self.schema:
            admin = sa.create_engine(PG_URL)
            with admin.begin() as conn:
                conn.execute(sa.schema.DropSchema(self.schema, cascade=True))
            admin.dispose()


def build_master(rows: int, use_sqlite: bool, folder: Path) -> Master:
    """A master with one table of `rows` rows, initialised for sync."""
    database = None
    if use_sqlite:
        url, schema = f"sqlite:///{folder / f'master-{rows}-{uuid.uuid4().hex[:6]}.db'}", None
    elif ON_MARIADB["on"]:
        schema, database = None, f"bench_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(MARIADB_URL)
        with admin.begin() as conn:  # a generated name
            quoted = admin.dialect.identifier_preparer.quote(database)
            conn.exec_driver_sql(f"CREATE DATABASE {quoted} CHARACTER SET utf8mb4")
        admin.dispose()
        url = sa.engine.make_url(MARIADB_URL).set(database=database).render_as_string(hide_password=False)
    else:
        schema = f"bench_{uuid.uuid4().hex[:10]}"
        admin = sa.create_engine(PG_URL)
        with admin.begin() as conn:
            conn.execute(sa.schema.CreateSchema(schema))
        admin.dispose()
        url = sa.engine.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
        url = url.render_as_string(hide_password=False)
    engine = connect_master(url, must_exist=False)
    metadata = sa.MetaData()
    item = item_table(metadata)
    metadata.create_all(engine)
    with engine.begin() as conn:
        chunk = 50_000
        for start in range(1, rows + 1, chunk):
            conn.execute(
                sa.insert(item),
                [
                    {
                        "id": i,
                        "name": f"item {i}",
                        "qty": i % 97,
                        "price": Decimal(i % 10_000) / 100,
                        "updated_on": None,
                        "note": "ü" * (i % 7),
                    }
                    for i in range(start, min(start + chunk, rows + 1))
                ],
            )
        if conn.dialect.name == "postgresql":
            from sync_pipeline.engine.load import advance_sequence

            advance_sequence(conn, reflect_tables(conn, ["item"])["item"])
            conn.exec_driver_sql("ANALYZE item")
    init_master(engine, parse_settings(SETTINGS, "bench.yaml"))
    return Master(url, engine, schema, rows, database)


def timed(func: Callable[[], object]) -> float:
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    return statistics.median(values)


# ------------------------------------------------------------------------------------------------
# Raw baselines
# ------------------------------------------------------------------------------------------------


def raw_copy(master: Master, target: Path) -> None:
    """The floor of a checkout: server-side cursor -> sqlite3 executemany, one transaction."""
    conn = sqlite3.connect(target, isolation_level=None)
    conn.execute(
        "CREATE TABLE item (id INTEGER PRIMARY KEY, name VARCHAR(60) NOT NULL, qty INTEGER NOT NULL, "
        "price NUMERIC(10,2) NOT NULL, updated_on DATE, note TEXT)"
    )
    conn.execute("BEGIN")
    if master.database:
        from MySQLdb.cursors import SSCursor

        raw = master.engine.raw_connection()
        try:
            cur = raw.cursor(SSCursor)
            cur.execute("SELECT id, name, qty, price, updated_on, note FROM item")
            while batch := cur.fetchmany(10_000):
                conn.executemany(
                    "INSERT INTO item VALUES (?, ?, ?, ?, ?, ?)",
                    [(r[0], r[1], r[2], str(r[3]), r[4] and r[4].isoformat(), r[5]) for r in batch],
                )
            cur.close()
        finally:
            raw.close()
    elif master.schema:
        import psycopg

        dsn = sa.engine.make_url(PG_URL).set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(dsn, options=f"-csearch_path={master.schema}") as pg, pg.cursor(name="raw") as cur:
            cur.itersize = 10_000
            cur.execute("SELECT id, name, qty, price, updated_on, note FROM item")
            while batch := cur.fetchmany(10_000):
                conn.executemany(
                    "INSERT INTO item VALUES (?, ?, ?, ?, ?, ?)",
                    [(r[0], r[1], r[2], str(r[3]), r[4] and r[4].isoformat(), r[5]) for r in batch],
                )
    else:
        source = sqlite3.connect(master.engine.url.database)
        cursor = source.execute("SELECT id, name, qty, price, updated_on, note FROM item")
        while batch := cursor.fetchmany(10_000):
            conn.executemany("INSERT INTO item VALUES (?, ?, ?, ?, ?, ?)", batch)
        source.close()
    conn.execute("COMMIT")
    conn.close()


@dataclass
class ChangePlan:
    updates: list[int]
    inserts: list[int]
    deletes: list[int]
    master_touched: list[int]


def plan_changes(rows: int, changes: int, seed: int = 1) -> ChangePlan:
    """60% updates, 25% inserts, 15% deletes; 10% of the updated/deleted keys also changed on the master."""
    rng = random.Random(seed)
    existing = rng.sample(range(1, rows + 1), int(changes * 0.75))
    updates, deletes = existing[: int(changes * 0.60)], existing[int(changes * 0.60) :]
    inserts = list(range(rows + 1, rows + 1 + int(changes * 0.25)))
    master_touched = rng.sample(existing, int(changes * 0.10))
    return ChangePlan(updates, inserts, deletes, master_touched)


def apply_local(replica: Path, plan: ChangePlan) -> None:
    conn = sqlite3.connect(replica, isolation_level=None)
    conn.execute("BEGIN")
    conn.executemany("UPDATE item SET qty = qty + 1, note = 'local' WHERE id = ?", [(i,) for i in plan.updates])
    conn.executemany(
        "INSERT INTO item (id, name, qty, price, updated_on, note) VALUES (?, ?, 1, '9.99', NULL, 'new')",
        [(i, f"new {i}") for i in plan.inserts],
    )
    conn.executemany("DELETE FROM item WHERE id = ?", [(i,) for i in plan.deletes])
    conn.execute("COMMIT")
    conn.close()


def apply_master(master: Master, plan: ChangePlan) -> None:
    item = item_table(sa.MetaData())
    with master.engine.begin() as conn:
        conn.execute(
            sa.update(item).where(item.c.id == sa.bindparam("k")).values(name=sa.bindparam("n")),
            [{"k": i, "n": f"master {i}"} for i in plan.master_touched],
        )


# The baseline's change capture on PostgreSQL: the row-level PL/pgSQL trigger that `init-master` installed
# until issue 14 (dialects/postgresql_capture.py of that time, generated for `item_raw`), frozen here so
# that the figure keeps comparing against the same writer whatever the master's capture becomes.
ROW_TRIGGER_FUNCTION = """
CREATE FUNCTION sync_clock_fn_item_raw() RETURNS trigger LANGUAGE plpgsql AS $body$
DECLARE
  ts text := to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US');
BEGIN
  IF TG_OP = 'DELETE' THEN
    INSERT INTO sync_field_clock (table_name, row_key, column_name, changed_at)
      VALUES ('item_raw', CAST(OLD."id" AS TEXT), '*', ts)
      ON CONFLICT (table_name, row_key, column_name) DO UPDATE SET changed_at = EXCLUDED.changed_at;
    INSERT INTO sync_tombstone (table_name, row_key, deleted_at, row_image, deleted_by)
      VALUES ('item_raw', CAST(OLD."id" AS TEXT), ts, to_jsonb(OLD)::text,
              json_build_object('current_user', current_user, 'session_user', session_user,
                                'application_name', current_setting('application_name', true))::text)
      ON CONFLICT (table_name, row_key, deleted_at)
      DO UPDATE SET row_image = EXCLUDED.row_image, deleted_by = EXCLUDED.deleted_by;
  ELSIF TG_OP = 'INSERT' THEN
    INSERT INTO sync_field_clock (table_name, row_key, column_name, changed_at)
      VALUES ('item_raw', CAST(NEW."id" AS TEXT), '*', ts)
      ON CONFLICT (table_name, row_key, column_name) DO UPDATE SET changed_at = EXCLUDED.changed_at;
  ELSE
    INSERT INTO sync_field_clock (table_name, row_key, column_name, changed_at)
      SELECT 'item_raw', CAST(NEW."id" AS TEXT), v.col, ts
      FROM (VALUES ('id', OLD."id" IS DISTINCT FROM NEW."id"),
          ('name', OLD."name" IS DISTINCT FROM NEW."name"),
          ('qty', OLD."qty" IS DISTINCT FROM NEW."qty"),
          ('price', OLD."price" IS DISTINCT FROM NEW."price"),
          ('updated_on', OLD."updated_on" IS DISTINCT FROM NEW."updated_on"),
          ('note', OLD."note" IS DISTINCT FROM NEW."note")) AS v(col, changed)
      WHERE v.changed
      ON CONFLICT (table_name, row_key, column_name) DO UPDATE SET changed_at = EXCLUDED.changed_at;
  END IF;
  RETURN NULL;
END
$body$"""
ROW_TRIGGER = (
    "CREATE TRIGGER sync_clock_item_raw AFTER INSERT OR UPDATE OR DELETE ON item_raw "
    "FOR EACH ROW EXECUTE FUNCTION sync_clock_fn_item_raw()"
)


def install_baseline_capture(conn: sa.Connection, master: Master) -> None:
    """The baseline copy's change capture: the frozen row trigger on PostgreSQL; elsewhere the dialect's."""
    if master.schema:
        conn.exec_driver_sql(ROW_TRIGGER_FUNCTION)
        conn.exec_driver_sql(ROW_TRIGGER)
    else:
        impl_for(conn).install_capture(conn, reflect_tables(conn, ["item_raw"])["item_raw"])


def remove_baseline_capture(conn: sa.Connection, master: Master) -> None:
    if master.schema:
        conn.exec_driver_sql("DROP TRIGGER sync_clock_item_raw ON item_raw")
        conn.exec_driver_sql("DROP FUNCTION sync_clock_fn_item_raw()")
    else:
        impl_for(conn).remove_capture(conn, reflect_tables(conn, ["item_raw"])["item_raw"])
    clock = sa.Table("sync_field_clock", sa.MetaData(), autoload_with=conn)
    conn.execute(sa.delete(clock).where(clock.c.table_name == "item_raw"))
    tombstone = sa.Table("sync_tombstone", sa.MetaData(), autoload_with=conn)
    conn.execute(sa.delete(tombstone).where(tombstone.c.table_name == "item_raw"))


def raw_apply(master: Master, plan: ChangePlan, with_capture: bool = False) -> float:
    """The floor of a load: the same net changes with executemany in one transaction, on a copy table.

    `with_capture`: the copy gets the row-level change-capture trigger the master's tables had before
    issue 14 (`install_baseline_capture`): what a writer into the master paid per row until then.
    """
    metadata = sa.MetaData()
    item = item_table(metadata)
    copy = sa.Table("item_raw", metadata, *[sa.Column(c.name, c.type, primary_key=c.primary_key) for c in item.c])
    with master.engine.begin() as conn:
        copy.drop(conn, checkfirst=True)
        copy.create(conn)
        conn.execute(sa.insert(copy).from_select([c.name for c in item.c], sa.select(item)))
        if with_capture:
            install_baseline_capture(conn, master)
    settle(master)
    raw = master.engine.raw_connection()
    try:
        cur = raw.cursor()
        ph = "%s" if master.schema or master.database else "?"
        start = time.perf_counter()
        cur.executemany(
            f"UPDATE item_raw SET qty = qty + 1, note = 'local' WHERE id = {ph}", [(i,) for i in plan.updates]
        )
        cur.executemany(
            f"INSERT INTO item_raw (id, name, qty, price, updated_on, note) VALUES ({ph}, {ph}, 1, 9.99, NULL, 'new')",
            [(i, f"new {i}") for i in plan.inserts],
        )
        cur.executemany(f"DELETE FROM item_raw WHERE id = {ph}", [(i,) for i in plan.deletes])
        raw.commit()
        elapsed = time.perf_counter() - start
    finally:
        raw.close()
    with master.engine.begin() as conn:
        if with_capture:
            remove_baseline_capture(conn, master)
        copy.drop(conn)
    return elapsed


# ------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------


def measure_checkout(master: Master, folder: Path, repeat: int) -> tuple[float, float]:
    ours, raw = [], []
    for n in range(repeat):
        target = folder / f"co-{n}.db"
        ours.append(timed(lambda: checkout(master.engine, target, "bench")))  # noqa: B023
        target.unlink()
        baseline = folder / f"raw-{n}.db"
        raw.append(timed(lambda: raw_copy(master, baseline)))  # noqa: B023
        baseline.unlink()
    return median(ours), median(raw)


def settle(master: Master) -> None:
    """Flush what setting up the master wrote (about 0.5 GB of WAL for 1M rows) before a figure is taken:
    otherwise PostgreSQL's checkpoint of the setup, due after every 1 GB of WAL at the default
    `max_wal_size`, lands inside whichever measurement comes next and adds its writes to that one alone."""
    if master.engine.dialect.name != "postgresql":
        return
    with master.engine.connect() as conn:
        conn.exec_driver_sql("CHECKPOINT")


@contextmanager
def changed_replica(
    rows: int, changes: int, use_sqlite: bool, folder: Path, name: str, seed: int
) -> Iterator[tuple[Master, Path, ChangePlan]]:
    """A fresh master of `rows` rows and a replica of it with `changes` local changes, 10% of their keys
    also changed on the master (`plan_changes`); the master is dropped afterwards."""
    master = build_master(rows, use_sqlite, folder)
    try:
        replica = folder / f"{name}.db"
        checkout(master.engine, replica, "bench")
        plan = plan_changes(rows, changes, seed=seed)
        apply_local(replica, plan)
        apply_master(master, plan)
        settle(master)
        yield master, replica, plan
        replica.unlink(missing_ok=True)
    finally:
        master.drop()


def measure_sync(rows: int, changes: int, use_sqlite: bool, folder: Path, repeat: int) -> tuple[float, float, float]:
    """(ours, raw apply into a plain copy, raw apply into a copy with the master's change capture)."""
    ours, raw, raw_captured = [], [], []
    for n in range(repeat):
        with changed_replica(rows, changes, use_sqlite, folder, f"sync-{n}", seed=n) as (master, replica, plan):
            raw.append(raw_apply(master, plan))
            raw_captured.append(raw_apply(master, plan, with_capture=True))
            settle(master)
            ours.append(timed(lambda: run_sync(master.engine, replica)))  # noqa: B023
    return median(ours), median(raw), median(raw_captured)


def measure_large_sync(rows: int, changes: int, use_sqlite: bool, folder: Path) -> float:
    """One engine sync of `changes` changes into `rows` rows (set against the median of the 10k syncs)."""
    with changed_replica(rows, changes, use_sqlite, folder, "sync-large", seed=7) as (master, replica, _plan):
        return timed(lambda: run_sync(master.engine, replica))


# The warm-up sync of each path before the timed ones: small, since what it pays is per process, not per row.
WARM_ROWS, WARM_CHANGES = 20_000, 500


def dagster_schedule(repeat: int) -> list[tuple[int, str]]:
    """The timed runs of `measure_dagster` in order: the two paths alternate which goes first in each
    repeat, so that neither always runs on a machine the other has just warmed (or loaded)."""
    paths = ("dagster", "engine")
    return [(n, kind) for n in range(repeat) for kind in (paths if n % 2 == 0 else paths[::-1])]


def measure_dagster(rows: int, changes: int, use_sqlite: bool, folder: Path, repeat: int) -> tuple[float, float, float]:
    """The whole asset graph with its GX checks (in-process, ephemeral instance) vs the engine alone, both
    in a warm process; and the one-off import of Great Expectations, paid once per process, apart.

    Each path first syncs once, untimed, at a small size: a process pays some costs once (the job's
    definitions, the protocol's template, SQLAlchemy's compiled statements of each path), and the
    timed runs of both paths then start equally warm."""
    import dagster as dg

    from sync_pipeline.dagster_run import materialize_sync
    from sync_pipeline.defs.gx_adapter import warm_up

    gx_import = timed(warm_up)

    def sync(kind: str, size: tuple[int, int], name: str, seed: int) -> float:
        with changed_replica(*size, use_sqlite, folder, name, seed=seed) as (master, replica, _plan):
            if kind == "engine":
                return timed(lambda: run_sync(master.engine, replica))
            with dg.instance_for_test() as instance:
                start = time.perf_counter()
                result = materialize_sync(master.url, str(replica), instance)
                elapsed = time.perf_counter() - start
            if result.status != "done":
                raise RuntimeError(f"dagster path ended {result.status}: {result.message}")
            return elapsed

    for kind in ("dagster", "engine"):
        sync(kind, (min(rows, WARM_ROWS), min(changes, WARM_CHANGES)), f"dg-warm-{kind}", seed=99)
    times: dict[str, list[float]] = {"dagster": [], "engine": []}
    for n, kind in dagster_schedule(repeat):
        times[kind].append(sync(kind, (rows, changes), f"dg-{n}-{kind}", seed=n))
    return median(times["dagster"]), median(times["engine"]), gx_import


def extract_and_detect(master: Master, replica: Path) -> None:
    opened = open_replica(master.engine, replica)
    try:
        changes = extract_changes(opened.conn, opened.infos)
        with master.engine.connect() as conn:
            detect_conflicts(conn, changes, opened.infos, opened.settings, opened.row)
    finally:
        opened.close()


def measure_scaling(
    small: int, large: int, changes: int, use_sqlite: bool, folder: Path, repeat: int
) -> tuple[float, float]:
    results = []
    for rows in (large, small):
        master = build_master(rows, use_sqlite, folder)
        try:
            replica = folder / f"scale-{rows}.db"
            checkout(master.engine, replica, "bench")
            plan = plan_changes(rows, changes)
            apply_local(replica, plan)
            apply_master(master, plan)
            extract_and_detect(master, replica)  # warm caches on both sizes alike
            results.append(median([timed(lambda: extract_and_detect(master, replica)) for _ in range(repeat)]))  # noqa: B023
            replica.unlink()
        finally:
            master.drop()
    return results[0], results[1]


def profile_sync(rows: int, changes: int, use_sqlite: bool, folder: Path, top: int = 30) -> str:
    """Where one engine sync's time goes: cProfile's cumulative time of the engine's own functions, and
    the driver's wait for the database (`connection.py(wait)`: the server's share). The profiler's own
    overhead inflates functions called per row, so read the shares, not the seconds."""
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    with changed_replica(rows, changes, use_sqlite, folder, "profile", seed=3) as (master, replica, _plan):
        profiler.runcall(run_sync, master.engine, replica)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(r"sync_pipeline/engine|psycopg/connection.py.*\(wait\)|sqlite3", top)
    return out.getvalue()


def peak_rss_mb(args: list[str]) -> float:
    """Peak resident memory of a child process running this script with `args`."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    completed = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=False)
    if completed.returncode != 0:
        raise RuntimeError(completed.stderr)
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    del before
    return report["peak_mb"]


def child_checkout(url: str, target: str) -> None:
    engine = connect_master(url)
    checkout(engine, target, "bench-memory")
    print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def child_sync(url: str, replica: str) -> None:
    engine = connect_master(url)
    run_sync(engine, replica)
    print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def measure_memory(master: Master, sync_changes: int, use_sqlite: bool, folder: Path) -> tuple[float, float]:
    checkout_mb = peak_rss_mb(["--child-checkout", master.url, str(folder / "mem-co.db")])
    sync_master = build_master(max(master.rows, int(sync_changes * 1.5)), use_sqlite, folder)
    try:
        replica = folder / "mem-sync.db"
        checkout(sync_master.engine, replica, "bench")
        plan = plan_changes(sync_master.rows, sync_changes)
        apply_local(replica, plan)
        apply_master(sync_master, plan)
        sync_mb = peak_rss_mb(["--child-sync", sync_master.url, str(replica)])
    finally:
        sync_master.drop()
    return checkout_mb, sync_mb


def measure_capture_overhead(master: Master, folder: Path, writes: int, repeat: int) -> tuple[float, float]:
    replica = folder / "cap.db"
    checkout(master.engine, replica, "bench")
    plain = folder / "cap-plain.db"
    ours, raw = [], []
    for n in range(repeat):
        shutil.copy(replica, plain)
        conn = sqlite3.connect(plain)
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
            conn.execute(f'DROP TRIGGER "{name}"')
        conn.commit()
        conn.close()
        plan = plan_changes(master.rows, writes, seed=100 + n)
        work = folder / "cap-work.db"
        shutil.copy(replica, work)
        ours.append(timed(lambda: apply_local(work, plan)))  # noqa: B023
        raw.append(timed(lambda: apply_local(plain, plan)))  # noqa: B023
    return median(ours), median(raw)


# ------------------------------------------------------------------------------------------------


@dataclass
class Row:
    figure: str
    ours: float
    baseline: float
    target: float
    unit: str = "s"
    ratio_kind: str = "ratio"

    @property
    def ratio(self) -> float:
        return self.ours / self.baseline if self.ratio_kind == "ratio" else self.ours

    @property
    def met(self) -> bool:
        return self.ratio <= self.target


def print_table(rows: list[Row], header: str) -> None:
    print(f"\n### {header}\n")
    print("| figure | ours | baseline | ratio | target | met |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        if r.ratio_kind == "ratio" and r.target == float("inf"):
            print(
                f"| {r.figure} | {r.ours:.2f} {r.unit} | {r.baseline:.2f} {r.unit} | {r.ratio:.2f} × | (reported) | — |"
            )
        elif r.ratio_kind == "ratio":
            print(
                f"| {r.figure} | {r.ours:.2f} {r.unit} | {r.baseline:.2f} {r.unit} | {r.ratio:.2f} × | "
                f"≤ {r.target} × | {'yes' if r.met else 'no'} |"
            )
        else:
            print(
                f"| {r.figure} | {r.ours:.0f} {r.unit} | — | — | ≤ {r.target:.0f} {r.unit} | "
                f"{'yes' if r.met else 'no'} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes (under a minute)")
    parser.add_argument("--sqlite", action="store_true", help="SQLite master instead of PostgreSQL")
    parser.add_argument("--mariadb", action="store_true", help="MariaDB master instead of PostgreSQL")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="", help="comma list: checkout,sync,scaling,memory,capture,dagster")
    parser.add_argument(
        "--profile", action="store_true", help="print where one engine sync's time goes (cProfile), then stop"
    )
    parser.add_argument("--child-checkout", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--child-sync", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_checkout:
        return child_checkout(*args.child_checkout)
    if args.child_sync:
        return child_sync(*args.child_sync)

    rows, changes, small = (50_000, 2_000, 5_000) if args.quick else (1_000_000, 10_000, 100_000)
    memory_changes = 5_000 if args.quick else 100_000
    only = set(filter(None, args.only.split(","))) or {"checkout", "sync", "scaling", "memory", "capture", "dagster"}
    ON_MARIADB["on"] = args.mariadb
    backend = "SQLite" if args.sqlite else "MariaDB" if args.mariadb else "PostgreSQL"
    if args.profile:
        with tempfile.TemporaryDirectory(prefix="sync-bench-") as tmp:
            print(f"# one engine sync of {changes:,} changes into {rows:,} rows ({backend}), under cProfile")
            print(profile_sync(rows, changes, args.sqlite, Path(tmp)))
        return None
    results: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="sync-bench-") as tmp:
        folder = Path(tmp)
        big = build_master(rows, args.sqlite, folder) if only & {"checkout", "memory", "capture"} else None
        try:
            if "checkout" in only and big:
                ours, raw = measure_checkout(big, folder, args.repeat)
                results.append(Row(f"checkout of {rows:,} rows ({backend})", ours, raw, 1.5))
                print(f"checkout: {ours:.2f}s vs raw {raw:.2f}s", file=sys.stderr)
            if "capture" in only and big:
                ours, raw = measure_capture_overhead(big, folder, changes, args.repeat)
                results.append(Row(f"replica writes ({changes:,}) with vs without change capture", ours, raw, 1.5))
                print(f"capture: {ours:.3f}s vs {raw:.3f}s", file=sys.stderr)
            if "memory" in only and big:
                checkout_mb, sync_mb = measure_memory(big, memory_changes, args.sqlite, folder)
                results.append(Row(f"peak RSS, checkout of {rows:,} rows", checkout_mb, 0, 400, "MB", "abs"))
                results.append(Row(f"peak RSS, sync of {memory_changes:,} changes", sync_mb, 0, 400, "MB", "abs"))
                print(f"memory: {checkout_mb:.0f} MB / {sync_mb:.0f} MB", file=sys.stderr)
        finally:
            if big:
                big.drop()
        if "sync" in only:
            ours, raw, raw_captured = measure_sync(rows, changes, args.sqlite, folder, args.repeat)
            results.append(
                Row(f"engine sync of {changes:,} changes into {rows:,} rows vs raw executemany", ours, raw, 4.0)
            )
            results.append(
                Row(
                    f"engine sync of {changes:,} changes vs raw writes into a copy with the row-level capture trigger",
                    ours,
                    raw_captured,
                    1.5,
                )
            )
            print(f"sync: {ours:.2f}s vs raw {raw:.2f}s / with capture {raw_captured:.2f}s", file=sys.stderr)
            large = measure_large_sync(rows, changes * 10, args.sqlite, folder)
            results.append(
                Row(f"sync of {changes * 10:,} vs {changes:,} changes into {rows:,} rows (one run)", large, ours, 8.0)
            )
            print(f"sync of {changes * 10:,} changes: {large:.2f}s", file=sys.stderr)
        if "scaling" in only:
            large_t, small_t = measure_scaling(small, rows, changes, args.sqlite, folder, args.repeat)
            results.append(
                Row(f"extract+detect {changes:,} changes: {rows:,} vs {small:,} rows", large_t, small_t, 1.3)
            )
            print(f"scaling: {large_t:.2f}s vs {small_t:.2f}s", file=sys.stderr)
        if "dagster" in only:
            dagster_t, engine_t, gx_t = measure_dagster(rows, changes, args.sqlite, folder, args.repeat)
            results.append(
                Row(f"Dagster path (graph + GX checks) for {changes:,} changes", dagster_t, 0, 15, "s", "abs")
            )
            # sync_detect + sync_apply with their checks and the JSON/Markdown/HTML protocol (issue 14: ≤ 2 ×).
            results.append(Row("Dagster path over the engine path", dagster_t, engine_t, 2.0))
            print(f"dagster: {dagster_t:.2f}s vs engine {engine_t:.2f}s; GX import once {gx_t:.2f}s", file=sys.stderr)
    size = "quick" if args.quick else "full"
    print_table(results, f"{backend}, {size} size, median of {args.repeat}")


if __name__ == "__main__":
    main()
