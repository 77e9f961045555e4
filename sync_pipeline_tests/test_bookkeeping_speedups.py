"""The engine's bookkeeping shortcuts keep what they replace: the prebuilt JSON encoders write the text
`json` writes with the same options, the collector pause ends where it began and covers a sync's steps,
and the sync tables' bulk insert takes a generator one chunk at a time."""

from __future__ import annotations

import datetime as dt
import decimal
import gc
import json
import threading
import uuid

import sqlalchemy as sa
from hypothesis import given, settings
from hypothesis import strategies as st

from sync_pipeline.engine import store
from sync_pipeline.engine.collector import collector_paused
from sync_pipeline.engine.progress import listening
from sync_pipeline.engine.session import run_sync
from sync_pipeline.engine.values import dumps, dumps_plain, encode
from sync_pipeline_tests.helpers import make_master, make_replica, replica_sql, row

# What a normalised row holds: JSON's own values, and the types `encode` turns into text.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(),
    st.decimals(allow_nan=False, allow_infinity=False),
    st.datetimes(),
    st.dates(),
    st.times(),
    st.binary(max_size=20),
    st.uuids(),
    st.timedeltas(),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4), max_leaves=10)
rows = st.dictionaries(st.text(min_size=1, max_size=12), values, max_size=8)


@settings(max_examples=300, deadline=None)
@given(rows)
def test_dumps_writes_what_the_json_encoder_with_the_same_options_writes(row: dict) -> None:
    expected = json.JSONEncoder(default=encode, ensure_ascii=False, sort_keys=True).encode(row)
    assert dumps(row) == expected


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.lists(st.text(), max_size=6),
        st.dictionaries(st.text(), st.text(), max_size=6),
    )
)
def test_dumps_plain_writes_what_json_dumps_writes(value: list | dict) -> None:
    assert dumps_plain(value) == json.dumps(value)


def test_dumps_plain_refuses_what_json_dumps_refuses() -> None:
    for value in ({"a": decimal.Decimal("1.5")}, [dt.date(2026, 1, 1)], [uuid.uuid4()]):
        try:
            dumps_plain(value)
        except TypeError as exc:
            assert "not JSON serializable" in str(exc)
        else:
            raise AssertionError(f"dumps_plain encoded {value!r}")


def test_the_collector_pause_nests_and_ends_where_it_began() -> None:
    assert gc.isenabled()
    with collector_paused():
        assert not gc.isenabled()
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()  # the outer pause still holds
    assert gc.isenabled()
    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # it was off before: a pause never turns it on
    finally:
        gc.enable()


def test_the_collector_resumes_after_concurrent_pauses_and_after_an_error() -> None:
    inside, release = threading.Barrier(3), threading.Event()

    def pause() -> None:
        with collector_paused():
            inside.wait()
            release.wait()

    threads = [threading.Thread(target=pause) for _ in range(2)]
    for thread in threads:
        thread.start()
    inside.wait()
    assert not gc.isenabled()
    release.set()
    for thread in threads:
        thread.join()
    assert gc.isenabled()
    try:
        with collector_paused():
            raise RuntimeError("step failed")
    except RuntimeError:
        pass
    assert gc.isenabled()


def test_bulk_insert_takes_a_generator_a_chunk_at_a_time(tmp_path) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'master.db'}")
    store.metadata.create_all(engine, tables=[store.sync_field_clock])
    total = store.BULK_CHUNK * 2 + 7
    produced = []
    progress: list[tuple[int, int]] = []

    def events():
        for n in range(total):
            produced.append(n)
            yield {"table_name": "item", "row_key": str(n), "column_name": "qty", "changed_at": f"2026-11-30 {n}"}

    def on_chunk(done: int, of: int) -> None:
        # Only the chunk being written has been produced: the generator is never drained at once.
        assert len(produced) == done
        progress.append((done, of))

    with engine.begin() as conn:
        store.insert_rows(conn, store.sync_field_clock, events(), on_chunk, total=total)
    assert progress == [(store.BULK_CHUNK, total), (store.BULK_CHUNK * 2, total), (total, total)]
    with engine.connect() as conn:
        keys = conn.execute(sa.select(store.sync_field_clock.c.row_key)).scalars()
        assert sorted(keys, key=int) == [str(n) for n in range(total)]


def test_a_sync_runs_its_steps_with_the_collector_paused_and_resumes_it(tmp_path) -> None:
    engine = make_master(f"sqlite:///{tmp_path / 'master.db'}")
    replica = make_replica(engine, tmp_path)
    replica_sql(
        replica,
        "UPDATE parent SET city = 'Field' WHERE id = 2",
        "INSERT INTO child (id, parent_id, label, amount) VALUES (11, 2, 'new', '3.00')",
    )
    seen: list[tuple[str, bool]] = []
    with listening(lambda stage, _done, _total: seen.append((stage, gc.isenabled()))):
        result = run_sync(engine, replica)
    assert result.status == "done"
    assert {stage for stage, _ in seen} >= {"extract", "verify", "store", "load"}
    assert [stage for stage, enabled in seen if enabled] == []  # every step's report came with it paused
    assert gc.isenabled()
    assert row(engine, "parent", id=2)["city"] == "Field"
    assert row(engine, "child", id=11)["label"] == "new"
