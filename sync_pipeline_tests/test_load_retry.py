"""Deadlocks and serialization failures between concurrent transactions are retried (engine/retry.py),
on a real PostgreSQL server; other errors are not."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa

from sync_pipeline.engine.retry import TransientRetries, retry_transient, transient_kind
from sync_pipeline_tests.conftest import fresh_master_url


@pytest.fixture
def pg_url(tmp_path: Path):
    with fresh_master_url("postgresql", tmp_path, prefix="retry") as url:
        yield url


def _table(engine: sa.Engine) -> sa.Table:
    meta = sa.MetaData()
    table = sa.Table("account", meta, sa.Column("id", sa.Integer, primary_key=True), sa.Column("n", sa.Integer))
    meta.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sa.insert(table), [{"id": 1, "n": 0}, {"id": 2, "n": 0}])
    return table


def test_deadlocked_transactions_are_retried_until_both_commit(pg_url: str) -> None:
    engine = sa.create_engine(pg_url, pool_size=4)
    table = _table(engine)
    both_hold_one = threading.Barrier(2, timeout=20)
    retries = [TransientRetries(), TransientRetries()]
    errors: list[BaseException] = []

    def transfer(first: int, second: int, retries_of: TransientRetries) -> None:
        attempts = 0

        def attempt() -> None:
            nonlocal attempts
            attempts += 1
            with engine.begin() as conn:
                conn.execute(sa.update(table).where(table.c.id == first).values(n=table.c.n + 1))
                if attempts == 1:  # the first attempts lock in opposite orders at the same time
                    both_hold_one.wait()
                conn.execute(sa.update(table).where(table.c.id == second).values(n=table.c.n + 1))

        try:
            retry_transient(attempt, retries_of)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [
        threading.Thread(target=transfer, args=(1, 2, retries[0])),
        threading.Thread(target=transfer, args=(2, 1, retries[1])),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    # PostgreSQL aborted one of them with 40P01; it ran again and both transfers are in the table, once each.
    assert retries[0].counts["deadlock"] + retries[1].counts["deadlock"] == 1
    with engine.connect() as conn:
        assert dict(conn.execute(sa.select(table.c.id, table.c.n)).all()) == {1: 2, 2: 2}
    engine.dispose()


def test_serialization_failure_is_transient_and_other_errors_are_not(pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    table = _table(engine)
    serializable = engine.execution_options(isolation_level="SERIALIZABLE")
    with serializable.connect() as first, serializable.connect() as second:
        first.begin()
        second.begin()
        first.execute(sa.select(table)).all()
        second.execute(sa.select(table)).all()
        first.execute(sa.update(table).where(table.c.id == 1).values(n=5))
        first.commit()
        with pytest.raises(sa.exc.DBAPIError) as caught:
            second.execute(sa.update(table).where(table.c.id == 1).values(n=6))
        second.rollback()
    assert transient_kind(caught.value) == "serialization_failure"

    retries = TransientRetries()
    with pytest.raises(sa.exc.IntegrityError):  # a duplicate key is the data's fault: never retried

        def duplicate() -> None:
            with engine.begin() as conn:
                conn.execute(sa.insert(table).values(id=1, n=0))

        retry_transient(duplicate, retries)
    assert retries.total == 0
    engine.dispose()


def test_retries_are_bounded() -> None:
    retries = TransientRetries()
    calls = 0

    class Deadlock(Exception):
        sqlstate = "40P01"

    def always_deadlocked() -> None:
        nonlocal calls
        calls += 1
        raise sa.exc.OperationalError("UPDATE ...", {}, Deadlock("deadlock detected"))

    with pytest.raises(sa.exc.OperationalError):
        retry_transient(always_deadlocked, retries, max_attempts=3, sleep=lambda _s: None)
    assert calls == 3 and retries.counts["deadlock"] == 2
