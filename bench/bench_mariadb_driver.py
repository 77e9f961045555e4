"""Which Python driver for a MariaDB master: PyMySQL, mysqlclient or the MariaDB connector.

    .venv/bin/python bench/bench_mariadb_driver.py              # 20,000 rows, 3 repeats
    .venv/bin/python bench/bench_mariadb_driver.py --rows 2000  # quicker

Each driver inserts the same N rows through SQLAlchemy Core (one executemany), reads them back
(one SELECT, all rows fetched) and looks 500 of them up by key one at a time (the round trip the
engine pays per statement). Figures are medians of --repeat runs, in seconds, with the ratio to the
fastest driver of the same run. A driver that is not installed is reported as such, not measured.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

HOST = os.environ.get("SYNC_BENCH_MARIADB", "root@127.0.0.1:3306")
# The MariaDB connector speaks utf8mb4 always and refuses a `charset` argument.
DRIVERS = {
    "PyMySQL": ("mysql+pymysql", "?charset=utf8mb4"),
    "mysqlclient": ("mysql+mysqldb", "?charset=utf8mb4"),
    "MariaDB Connector/Python": ("mariadb+mariadbconnector", ""),
}
LOOKUPS = 500


def _table(metadata: sa.MetaData) -> sa.Table:
    return sa.Table(
        "item",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("name", sa.String(60), nullable=False),
        sa.Column("qty", sa.Integer, nullable=False),
        sa.Column("price", sa.Numeric(10, 2), nullable=False),
        sa.Column("seen", sa.DateTime().with_variant(mysql.DATETIME(fsp=6), "mysql", "mariadb")),
        sa.Column("note", sa.Text),
    )


def _rows(n: int) -> list[dict[str, object]]:
    when, note = datetime(2026, 11, 30, 12, 0, 0, 123456), "x" * 40
    return [
        {"id": i, "name": f"Müller 😀 {i}", "qty": i % 97, "price": Decimal(i % 1000) / 4, "seen": when, "note": note}
        for i in range(1, n + 1)
    ]


def _timed(work: Callable[[], object]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def _lookups(conn: sa.Connection, table: sa.Table, rows: list[dict[str, object]]) -> None:
    by_key = sa.select(table).where(table.c.id == sa.bindparam("k"))
    for row in rows[:: max(1, len(rows) // LOOKUPS)][:LOOKUPS]:
        conn.execute(by_key, {"k": row["id"]}).one()


def measure(prefix: str, query: str, rows: list[dict[str, object]], repeat: int) -> dict[str, float]:
    database = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(f"{prefix}://{HOST}/test{query}")
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE DATABASE `{database}` CHARACTER SET utf8mb4"))  # generated name, no input
    engine = sa.create_engine(f"{prefix}://{HOST}/{database}{query}")
    metadata = sa.MetaData()
    table = _table(metadata)
    figures: dict[str, list[float]] = {"insert": [], "select": [], "lookups": []}
    try:
        for _ in range(repeat):
            metadata.drop_all(engine)
            metadata.create_all(engine)
            with engine.begin() as conn:
                figures["insert"].append(_timed(lambda c=conn: c.execute(table.insert(), rows)))
            with engine.connect() as conn:
                figures["select"].append(_timed(lambda c=conn: c.execute(sa.select(table)).all()))
                figures["lookups"].append(_timed(lambda c=conn: _lookups(c, table, rows)))
            with engine.connect() as conn:  # the data came back intact (4-byte characters, microseconds)
                first = conn.execute(sa.select(table).where(table.c.id == 1)).one()
                assert first.name == rows[0]["name"] and first.seen == rows[0]["seen"], first
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.execute(sa.text(f"DROP DATABASE `{database}`"))
        admin.dispose()
    return {k: statistics.median(v) for k, v in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    rows = _rows(args.rows)
    results: dict[str, dict[str, float]] = {}
    for name, (prefix, query) in DRIVERS.items():
        try:
            sa.create_engine(f"{prefix}://{HOST}/test")
        except ImportError as exc:
            print(f"{name}: not installed ({exc})")
            continue
        results[name] = measure(prefix, query, rows, args.repeat)
    print(f"\n{args.rows} rows, median of {args.repeat}; ratio to the fastest driver in brackets")
    print(f"{'driver':<26}{'insert':>16}{'select':>16}{f'{LOOKUPS} lookups':>16}")
    best = {k: min(r[k] for r in results.values()) for k in ("insert", "select", "lookups")}
    for name, r in results.items():
        cells = "".join(f"{f'{r[k]:.3f} ({r[k] / best[k]:.1f}x)':>16}" for k in ("insert", "select", "lookups"))
        print(f"{name:<26}{cells}")


if __name__ == "__main__":
    main()
