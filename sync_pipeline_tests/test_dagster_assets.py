"""The sync as a Dagster asset graph, materialized for real against a Dagster instance and a real master
(SQLite, PostgreSQL and MariaDB): automatic end to end, manual waiting then loading, resuming, bad input.

The helpers at the top are shared with the other test_dagster_* modules.
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from sync_pipeline.dagster_run import materialize_sync
from sync_pipeline.definitions import build_definitions
from sync_pipeline.defs.assets import conflicts, local_changes, master_load, resolutions, sync_protocol
from sync_pipeline.defs.jobs import APPLY_JOB_NAME
from sync_pipeline.defs.partitions import REPLICAS_PARTITION_NAME, partition_key_of
from sync_pipeline.defs.run_keys import APPLY_KEY_TAG, STATE_TAG, SYNC_JOB_NAME, apply_key
from sync_pipeline.demo import DEMO_SETTINGS, build_master, demo_metadata, make_demo_edits
from sync_pipeline.engine.checkout import checkout
from sync_pipeline.engine.errors import BadInputError, ReplicaError
from sync_pipeline.engine.master import connect_master, init_master
from sync_pipeline.engine.queries import list_conflicts
from sync_pipeline.engine.records import decision_version
from sync_pipeline.engine.replica import open_replica
from sync_pipeline.engine.session import decide_module, open_session_of
from sync_pipeline.engine.settings import parse_settings
from sync_pipeline.reports import markdown as md
from sync_pipeline_tests.masters import backend_on_all_masters  # noqa: F401 - `backend` over all three masters

# The demo's settings with the manual CRM module settled automatically: nothing waits for a person.
AUTOMATIC_SETTINGS = DEMO_SETTINGS.replace("policy: manual", "policy: local_wins")


@dataclass
class Demo:
    master_url: str
    engine: Engine
    replica: Path
    replica_id: str

    @property
    def partition(self) -> str:
        """The replica's Dagster partition key (owner + short id), as the master names it."""
        return partition_key_of(self.engine, self.replica_id)


def build_demo(
    master_url: str,
    folder: Path,
    settings_text: str = DEMO_SETTINGS,
    edits: bool = True,
    replica_name: str = "alex.db",
    build: bool = True,
) -> Demo:
    """The demo's master on `master_url` (tables, sync tables), a replica, and edits on both sides."""
    engine = connect_master(master_url, must_exist=False)
    if build:
        build_master(engine)
        if engine.dialect.name == "postgresql":
            advance_sequences(engine)
        init_master(engine, parse_settings(settings_text, "test-settings.yaml"))
    folder.mkdir(parents=True, exist_ok=True)
    replica = folder / replica_name
    result = checkout(engine, replica, "Alex Field")
    if edits:
        make_demo_edits(engine, replica)
    return Demo(master_url, engine, replica, result.replica_id)


def advance_sequences(engine: Engine) -> None:
    """build_master writes explicit ids; PostgreSQL's sequences must move past them for the master's
    own inserts in make_demo_edits."""
    with engine.begin() as conn:
        for table in demo_metadata().sorted_tables:
            key = list(table.primary_key.columns)
            if len(key) == 1 and isinstance(key[0].type, sa.Integer):
                sequence = sa.func.pg_get_serial_sequence(table.name, key[0].name)
                conn.execute(sa.select(sa.func.setval(sequence, sa.select(sa.func.max(key[0])).scalar_subquery())))


def business_rows(engine: Engine) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every demo table, in key order: equal snapshots mean the master's data is untouched."""
    tables = demo_metadata().tables
    with engine.connect() as conn:
        return {
            name: [tuple(row) for row in conn.execute(sa.select(table).order_by(*table.primary_key.columns))]
            for name, table in tables.items()
        }


def whole_master(engine: Engine) -> Any:
    """The entire master, sync tables included: the SQLite file's bytes, or every row of every table."""
    if engine.dialect.name == "sqlite":
        return hashlib.sha256(Path(str(engine.url.database)).read_bytes()).hexdigest()
    metadata = sa.MetaData()
    metadata.reflect(engine)
    with engine.connect() as conn:
        return {
            name: sorted(repr(tuple(row)) for row in conn.execute(sa.select(table)))
            for name, table in metadata.tables.items()
        }


def materialized_partitions(instance: dg.DagsterInstance, asset: dg.AssetsDefinition) -> set[str]:
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=asset.key), limit=100).records
    return {r.partition_key for r in records if r.partition_key}


def latest_metadata(instance: dg.DagsterInstance, asset: dg.AssetsDefinition, partition: str) -> dict[str, Any]:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset.key, asset_partitions=[partition]), limit=1
    ).records
    assert records, f"{asset.key.to_user_string()} was not materialized for {partition}"
    materialization = records[0].asset_materialization
    assert materialization is not None
    return {key: value.value for key, value in materialization.metadata.items()}


def check_evaluations(instance: dg.DagsterInstance, run_id: str) -> dict[str, Any]:
    out = {}
    for record in instance.get_records_for_run(run_id).records:
        event = record.event_log_entry.dagster_event
        if event is not None and event.event_type_value == "ASSET_CHECK_EVALUATION":
            out[event.event_specific_data.check_name] = event.event_specific_data
    return out


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


# ------------------------------------------------------------------------------------------------


def test_automatic_sync_runs_the_whole_graph_and_retires_the_replica(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)

    result = materialize_sync(master_url, str(demo.replica), instance)

    assert result.status == "done", result.message
    assert result.replica_id == demo.replica_id
    assert result.pending == {}
    assert result.modules["crm"]["conflicts"] == 5 and result.modules["sales"]["conflicts"] == 4
    assert instance.has_dynamic_partition(REPLICAS_PARTITION_NAME, demo.partition)
    for asset in (local_changes, conflicts, resolutions, master_load, sync_protocol):
        assert demo.partition in materialized_partitions(instance, asset), asset.key
    # One run, as the UI's launch: the job `sync` detected, decided by policy and loaded.
    [run] = instance.get_runs()
    assert (run.job_name, run.status) == (SYNC_JOB_NAME, dg.DagsterRunStatus.SUCCESS)

    # Counts are numeric metadata (the UI plots them), next to the session id.
    detected = latest_metadata(instance, conflicts, demo.partition)
    assert detected["session_id"] == result.session_id
    assert detected["crm/update_update"] == 1 and detected["sales/insert_insert"] == 1
    # The conflicts the policies decided, per module and rule, as the review lists them.
    decided_by_rule: dict[str, int] = {}
    for item in list_conflicts(demo.engine, result.session_id, "decided"):
        key = f"decided/{item['module']}/{item['decision']['rule']}"
        decided_by_rule[key] = decided_by_rule.get(key, 0) + 1
    resolved = latest_metadata(instance, resolutions, demo.partition)
    assert {k: v for k, v in resolved.items() if k.startswith("decided/")} == decided_by_rule
    assert sum(decided_by_rule.values()) == 9
    loaded = latest_metadata(instance, master_load, demo.partition)
    assert loaded["rows_after/company"] == loaded["rows_before/company"] + 1
    protocol = latest_metadata(instance, sync_protocol, demo.partition)["protocol"]
    # Values in the Markdown are escaped (reports/markdown.py): the session id stands in a code span.
    assert md.code(result.session_id) in protocol and md.text("update_update") in protocol

    # local_wins on crm: the field worker's phone number of contact 1 is in the master now.
    contact = demo_metadata().tables["contact"]
    with demo.engine.connect() as conn:
        assert conn.execute(sa.select(contact.c.phone).where(contact.c.id == 1)).scalar_one() == "+49 170 1111111"
    with pytest.raises(ReplicaError, match="retired"):
        open_replica(demo.engine, demo.replica)
    # Every check of the run reports its result in the run's history, passed.
    evaluations = check_evaluations(instance, run.run_id)
    assert sorted(evaluations) == [
        "decided_values_match_schema",
        "local_changes_match_schema",
        "local_changes_meet_settings_expectations",
        "master_reconciles",
        "no_manual_decisions_pending",
    ]
    assert all(e.passed for e in evaluations.values()), evaluations


def test_manual_sync_waits_without_loading_then_loads_after_decisions(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas")
    before = business_rows(demo.engine)

    waiting = materialize_sync(master_url, str(demo.replica), instance)

    assert waiting.status == "waiting"
    assert waiting.pending == {"crm": 5}
    assert business_rows(demo.engine) == before, "the detect run must not touch the master's data"
    [run] = instance.get_runs()
    assert run.job_name == SYNC_JOB_NAME and run.tags[STATE_TAG] == "waiting"
    assert APPLY_KEY_TAG not in run.tags, "a waiting session's load is not claimed"
    assert demo.partition not in materialized_partitions(instance, master_load)
    metadata = latest_metadata(instance, resolutions, demo.partition)
    assert metadata["pending/crm"] == 5 and metadata["pending_total"] == 5
    assert metadata["status"] == "waiting"

    # Running the sync again while it waits continues the same session; it still waits.
    again = materialize_sync(master_url, str(demo.replica), instance)
    assert (again.status, again.session_id) == ("waiting", waiting.session_id)
    assert latest_metadata(instance, local_changes, demo.partition)["resumed"] is True

    assert waiting.session_id is not None
    assert decide_module(demo.engine, waiting.session_id, "crm", "master", "Tess Tester") == 5
    done = materialize_sync(master_url, str(demo.replica), instance)

    assert (done.status, done.session_id) == ("done", waiting.session_id)
    assert open_session_of(demo.engine, demo.replica_id) is None
    # Three runs of `sync` in the history; the last loaded under the claim of the decided version.
    latest, *earlier = instance.get_runs()
    assert [r.job_name for r in [latest, *earlier]] == [SYNC_JOB_NAME] * 3
    version = decision_version(demo.engine, waiting.session_id)
    assert latest.tags[APPLY_KEY_TAG] == apply_key(waiting.session_id, version)
    assert latest.tags[STATE_TAG] == "done"
    assert all(APPLY_KEY_TAG not in r.tags for r in earlier)
    contact = demo_metadata().tables["contact"]
    with demo.engine.connect() as conn:
        # master_wins by decision: contact 1 keeps the master's phone; contact 2 gets the local one.
        phones = dict(conn.execute(sa.select(contact.c.id, contact.c.phone).where(contact.c.id.in_([1, 2]))).all())
    assert phones == {1: "+49 30 9999999", 2: "+49 170 2222222"}


def test_apply_run_refuses_to_load_while_conflicts_are_pending(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas")
    assert materialize_sync(master_url, str(demo.replica), instance).status == "waiting"
    before = whole_master(demo.engine)

    apply = (
        build_definitions(master_url)
        .resolve_job_def(APPLY_JOB_NAME)
        .execute_in_process(instance=instance, partition_key=demo.partition, raise_on_error=False)
    )

    assert not apply.success
    failed = [e for e in apply.get_asset_check_evaluations() if not e.passed]
    # The blocking gate fails the run; the WARN that decisions are pending only reports it.
    assert {(e.check_name, e.severity) for e in failed} == {
        ("resolutions_all_decided", dg.AssetCheckSeverity.ERROR),
        ("no_manual_decisions_pending", dg.AssetCheckSeverity.WARN),
    }
    failed = [e for e in failed if e.severity == dg.AssetCheckSeverity.ERROR]
    assert "crm has 5 undecided conflict(s)" in (failed[0].description or "")
    assert master_load.key not in {e.asset_key for e in apply.get_asset_materialization_events() if e.asset_key}
    assert whole_master(demo.engine) == before, "a failed gate must leave the master byte-for-byte unchanged"


def test_bad_input_is_refused_before_any_run(master_url: str, tmp_path: Path, instance: dg.DagsterInstance) -> None:
    demo = build_demo(master_url, tmp_path / "replicas", edits=False)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"definitely not a replica")

    with pytest.raises(BadInputError, match="not a SQLite database"):
        materialize_sync(master_url, str(junk), instance)
    with pytest.raises(BadInputError, match="does not exist"):
        materialize_sync(master_url, str(tmp_path / "missing.db"), instance)

    assert instance.get_runs() == []
    assert not instance.has_dynamic_partition(REPLICAS_PARTITION_NAME, demo.partition)


@pytest.mark.parametrize("fault", ["load_begin", "retire"])
def test_sync_continues_after_a_crash_in_the_apply_run(master_url: str, tmp_path: Path, fault: str) -> None:
    """A process killed while loading (`load_begin`: nothing committed) or after the load committed but
    before the file was retired (`retire`) is finished by the next sync, against the same instance."""
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)
    script = (
        "import sys\nfrom sync_pipeline.dagster_run import materialize_sync\n"
        "materialize_sync(sys.argv[1], sys.argv[2])\n"
    )
    killed = subprocess.run(
        [sys.executable, "-c", script, master_url, str(demo.replica)],
        env={**os.environ, "SYNC_FAULT": fault},
        capture_output=True,
        timeout=300,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]

    result = materialize_sync(master_url, str(demo.replica))

    assert result.status == "done", result.message
    with pytest.raises(ReplicaError, match="retired"):
        open_replica(demo.engine, demo.replica)
    contact = demo_metadata().tables["contact"]
    with demo.engine.connect() as conn:
        assert conn.execute(sa.select(contact.c.phone).where(contact.c.id == 1)).scalar_one() == "+49 170 1111111"


def test_the_master_url_is_not_stored_in_the_dagster_instance(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    # A query argument SQLite ignores stands in for a password: it must not reach the run storage.
    master_url = f"sqlite:///{tmp_path / 'master.db'}?not_a_secret_marker=1"
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)

    assert materialize_sync(master_url, str(demo.replica), instance).status == "done"

    assert "SYNC_MASTER_URL" not in os.environ
    for run in instance.get_runs():
        stored = dg.serialize_value(instance.get_job_snapshot(run.job_snapshot_id)) + json.dumps(run.run_config)
        assert "not_a_secret_marker" not in stored
