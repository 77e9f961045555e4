"""Sensors evaluated for real against a Dagster instance and a master: approval_sensor launches one load
per decision version; replica_sensor turns inbox files into partitions and skips junk."""

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from sync_pipeline.dagster_run import materialize_sync
from sync_pipeline.definitions import build_definitions
from sync_pipeline.defs.jobs import APPLY_JOB_NAME, DETECT_JOB_NAME
from sync_pipeline.defs.partitions import REPLICAS_PARTITION_NAME, replica_id_of_partition
from sync_pipeline.defs.resources import MasterDatabase, SyncInbox, SyncSettingsResource
from sync_pipeline.defs.sensors import APPLY_KEY_TAG, SESSION_TAG, approval_sensor, replica_sensor
from sync_pipeline.engine.queries import list_conflicts
from sync_pipeline.engine.session import SyncResult, decide, decide_module, open_session_of
from sync_pipeline_tests.test_dagster_assets import AUTOMATIC_SETTINGS, Demo, build_demo


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def tick_approval(instance: dg.DagsterInstance, master_url: str, cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"master": MasterDatabase(url=master_url)}
    )
    result = approval_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def tick_inbox(instance: dg.DagsterInstance, master_url: str, inbox: Path, cursor: str | None) -> dg.SensorResult:
    context = dg.build_sensor_context(
        instance=instance,
        cursor=cursor,
        resources={
            "master": MasterDatabase(url=master_url),
            "inbox": SyncInbox(path=str(inbox)),
            "sync_settings": SyncSettingsResource(),
        },
    )
    result = replica_sensor(context)
    assert isinstance(result, dg.SensorResult)
    return result


def settle(folder: Path) -> None:
    """Files the sensor takes must not be in the middle of a copy: give them a modification time in the past."""
    for file in folder.iterdir():
        if file.is_file() and not file.is_symlink():
            os.utime(file, (time.time() - 60, time.time() - 60))


def launch(instance: dg.DagsterInstance, master_url: str, job_name: str, request: dg.RunRequest) -> None:
    """What the sensor daemon does with a run request: add the partitions, then run the job."""
    run = (
        build_definitions(master_url)
        .resolve_job_def(job_name)
        .execute_in_process(
            instance=instance,
            partition_key=request.partition_key,
            run_config=request.run_config,
            tags={**request.tags, "dagster/run_key": request.run_key or ""},
            raise_on_error=False,
        )
    )
    assert run.success


def decided_and_requested(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> tuple[Demo, SyncResult, dg.RunRequest]:
    """The demo synced to waiting, crm decided, and the load approval_sensor asks for then."""
    demo = build_demo(master_url, tmp_path / "replicas")
    waiting = materialize_sync(master_url, str(demo.replica), instance)
    assert waiting.session_id
    decide_module(demo.engine, waiting.session_id, "crm", "local", "Tess Tester")
    [request] = tick_approval(instance, master_url, None).run_requests
    return demo, waiting, request


def test_sensors_run_by_default() -> None:
    assert approval_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert replica_sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert approval_sensor.job_name == APPLY_JOB_NAME
    assert replica_sensor.job_name == DETECT_JOB_NAME


def test_approval_sensor_makes_replicas_that_are_out_partitions(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas", edits=False)

    result = tick_approval(instance, master_url, None)

    assert not result.run_requests
    [partitions] = result.dynamic_partitions_requests
    # A key a person recognises: the owner and a short id, stored on the master for the replica.
    assert list(partitions.partition_keys) == [f"alex-field-{demo.replica_id.replace('-', '')[:8]}"]
    assert replica_id_of_partition(demo.engine, demo.partition) == demo.replica_id
    instance.add_dynamic_partitions(REPLICAS_PARTITION_NAME, [demo.partition])
    assert not tick_approval(instance, master_url, result.cursor).dynamic_partitions_requests


def test_approval_sensor_launches_one_load_per_decision_version(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas")
    waiting = materialize_sync(master_url, str(demo.replica), instance)
    assert waiting.status == "waiting" and waiting.session_id

    nothing_ready = tick_approval(instance, master_url, None)
    assert not nothing_ready.run_requests and nothing_ready.skip_reason

    decide_module(demo.engine, waiting.session_id, "crm", "local", "Tess Tester")
    version = open_session_of(demo.engine, demo.replica_id)["decision_version"]
    first = tick_approval(instance, master_url, nothing_ready.cursor)

    [request] = first.run_requests
    assert request.run_key == f"{waiting.session_id}:{version}"
    assert request.partition_key == demo.partition
    assert request.tags[APPLY_KEY_TAG] == request.run_key
    # The same tick again launches nothing: the cursor remembers the version.
    assert not tick_approval(instance, master_url, first.cursor).run_requests

    launch(instance, master_url, APPLY_JOB_NAME, request)

    assert open_session_of(demo.engine, demo.replica_id) is None  # done
    assert not tick_approval(instance, master_url, first.cursor).run_requests
    assert not tick_approval(instance, master_url, None).run_requests
    [apply_run] = [r for r in instance.get_runs() if r.job_name == APPLY_JOB_NAME]
    assert apply_run.tags["dagster/run_key"] == request.run_key


def test_changed_decision_before_the_load_launches_once_more(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas")
    waiting = materialize_sync(master_url, str(demo.replica), instance)
    assert waiting.session_id
    decide_module(demo.engine, waiting.session_id, "crm", "local", "Tess Tester")
    first = tick_approval(instance, master_url, None)
    [first_request] = first.run_requests

    conflict = list_conflicts(demo.engine, waiting.session_id, "decided")[0]
    decide(demo.engine, conflict["id"], "master", "Tess Tester")
    second = tick_approval(instance, master_url, first.cursor)

    [second_request] = second.run_requests
    assert second_request.run_key != first_request.run_key
    assert second_request.run_key.startswith(f"{waiting.session_id}:")
    assert not tick_approval(instance, master_url, second.cursor).run_requests


def test_approval_sensor_skips_a_load_that_already_ran(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo, waiting, request = decided_and_requested(master_url, tmp_path, instance)
    # A run carrying this load's key exists (e.g. the CLI's sync started it): a fresh cursor must not relaunch.
    instance.create_run_for_job(
        build_definitions(master_url).resolve_job_def(APPLY_JOB_NAME),
        tags={APPLY_KEY_TAG: request.run_key},
    )
    assert not tick_approval(instance, master_url, None).run_requests


def test_approval_sensor_waits_while_a_load_of_the_session_runs(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    # A load that re-detects goes on in its own run under the next decision version: the session looks
    # ready again meanwhile, but a second load run of it must not start (issue 17.4, seen on the stack).
    demo, waiting, request = decided_and_requested(master_url, tmp_path, instance)
    running = instance.create_run_for_job(
        build_definitions(master_url).resolve_job_def(APPLY_JOB_NAME),
        tags={SESSION_TAG: waiting.session_id, APPLY_KEY_TAG: request.run_key},
    )
    conflict = list_conflicts(demo.engine, waiting.session_id, "decided")[0]
    decide(demo.engine, conflict["id"], "master", "Tess Tester")  # a new decision version, session ready

    assert not tick_approval(instance, master_url, None).run_requests

    instance.report_run_failed(running)  # that run ends without loading: the new version is launched
    [again] = tick_approval(instance, master_url, None).run_requests
    assert again.run_key != request.run_key and again.run_key.startswith(f"{waiting.session_id}:")


def test_replica_sensor_registers_a_dropped_replica_and_skips_junk(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "junk.db").write_bytes(b"not a database at all")
    (inbox / "notes.txt").write_text("not a .db file")
    settle(inbox)

    only_junk = tick_inbox(instance, master_url, inbox, None)
    assert not only_junk.run_requests
    assert "junk.db" in (only_junk.skip_reason.skip_message or "")
    assert "not a SQLite database" in (only_junk.skip_reason.skip_message or "")
    # Junk is moved out of the way with its reason beside it; other names are left alone.
    [reason] = (inbox / "rejected").glob("*junk.db.reason.txt")
    assert "not a SQLite database" in reason.read_text()
    assert sorted(p.name for p in inbox.iterdir()) == [".spool", "notes.txt", "rejected"]

    dropped = inbox / "alex.db"
    shutil.copy2(demo.replica, dropped)
    demo.replica.unlink()
    assert not tick_inbox(instance, master_url, inbox, only_junk.cursor).run_requests  # maybe still being copied
    settle(inbox)
    found = tick_inbox(instance, master_url, inbox, only_junk.cursor)

    [request] = found.run_requests
    assert request.partition_key == demo.partition
    [spooled] = (inbox / ".spool").iterdir()
    assert spooled.name.endswith("-alex.db") and not dropped.exists()
    assert request.run_config["ops"]["local_changes"]["config"]["replica_path"] == str(spooled)
    assert request.tags["sync/inbox_file"] == "alex.db"
    [partitions] = found.dynamic_partitions_requests
    assert partitions.partitions_def_name == REPLICAS_PARTITION_NAME
    assert list(partitions.partition_keys) == [demo.partition]
    # Taken files are not launched twice.
    assert not tick_inbox(instance, master_url, inbox, found.cursor).run_requests

    instance.add_dynamic_partitions(REPLICAS_PARTITION_NAME, list(partitions.partition_keys))
    launch(instance, master_url, DETECT_JOB_NAME, request)
    session = open_session_of(demo.engine, demo.replica_id)
    assert session is not None and session["status"] == "ready"

    # Once loaded, the file is retired: dropped again, it is refused with the reason.
    [load] = tick_approval(instance, master_url, None).run_requests
    launch(instance, master_url, APPLY_JOB_NAME, load)
    shutil.copy2(spooled, inbox / "again.db")
    settle(inbox)
    retired = tick_inbox(instance, master_url, inbox, found.cursor)
    assert not retired.run_requests
    assert "again.db" in (retired.skip_reason.skip_message or "")
    assert "retired" in (retired.skip_reason.skip_message or "")


def test_replica_sensor_skips_when_the_master_is_missing(tmp_path: Path, instance: dg.DagsterInstance) -> None:
    result = tick_inbox(instance, f"sqlite:///{tmp_path / 'no-master.db'}", tmp_path, None)

    assert not result.run_requests
    assert "not reachable or not initialised" in (result.skip_reason.skip_message or "")
