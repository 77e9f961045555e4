"""The code location as people use it from the UI, run for real against a Dagster instance and a master
(SQLite and PostgreSQL): a waiting sync looks waiting, partitions have names and lose retired replicas,
run keys deduplicate across the CLI and the sensors, the inbox takes only safe files, and an empty
DAGSTER_HOME gets its dagster.yaml."""

import os
import shutil
from pathlib import Path

import dagster as dg
import pytest

from sync_pipeline.dagster_run import materialize_sync, sync_instance
from sync_pipeline.definitions import build_definitions
from sync_pipeline.defs.jobs import APPLY_JOB_NAME, DETECT_JOB_NAME
from sync_pipeline.defs.partitions import REPLICAS_PARTITION_NAME, partition_key_of, replica_id_of_partition
from sync_pipeline.defs.run_keys import APPLY_KEY_TAG, STATE_TAG, SYNC_JOB_NAME, claim_cli_apply
from sync_pipeline.defs.waiting_check import WAITING_CHECK_NAME
from sync_pipeline.engine.checkout import checkout
from sync_pipeline.engine.session import decide_module, open_session_of
from sync_pipeline.links import review_session_url
from sync_pipeline_tests.test_dagster_assets import AUTOMATIC_SETTINGS, build_demo, check_evaluations, whole_master
from sync_pipeline_tests.test_dagster_sensors import launch, settle, tick_approval, tick_inbox


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def runs_of(instance: dg.DagsterInstance, job_name: str) -> list[dg.DagsterRun]:
    return [run for run in instance.get_runs() if run.job_name == job_name]


# --- 17.1: a detect run that stops at manual conflicts looks waiting ------------------------------


def test_a_waiting_detect_run_warns_with_counts_tag_and_review_link(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas")

    waiting = materialize_sync(master_url, str(demo.replica), instance)

    assert waiting.status == "waiting" and waiting.session_id
    [detect] = runs_of(instance, SYNC_JOB_NAME)
    assert detect.status == dg.DagsterRunStatus.SUCCESS  # waiting is not a failure...
    assert instance.get_run_by_id(detect.run_id).tags[STATE_TAG] == "waiting"  # ...but the Runs list says so
    check = check_evaluations(instance, detect.run_id)[WAITING_CHECK_NAME]
    assert not check.passed
    assert check.severity == dg.AssetCheckSeverity.WARN
    assert check.description == "5 manual decisions pending: crm 5"
    review = review_session_url(waiting.session_id)
    assert check.metadata["review"] == dg.MetadataValue.url(review)

    decide_module(demo.engine, waiting.session_id, "crm", "local", "Tess Tester")
    assert materialize_sync(master_url, str(demo.replica), instance).status == "done"
    apply = runs_of(instance, SYNC_JOB_NAME)[0]  # the latest
    assert check_evaluations(instance, apply.run_id)[WAITING_CHECK_NAME].passed
    assert instance.get_run_by_id(apply.run_id).tags[STATE_TAG] == "done"


# --- 17.3: partitions a person recognises; retired replicas leave the set ------------------------


def test_partitions_are_named_by_owner_and_retired_replicas_leave_the_set(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)
    # A second replica of the same owner, and one of an owner whose name is not plain ASCII.
    second = checkout(demo.engine, tmp_path / "replicas" / "alex2.db", "Alex Field").replica_id
    other = checkout(demo.engine, tmp_path / "replicas" / "jurgen.db", "Jürgen Groß-Öller").replica_id

    assert materialize_sync(master_url, str(demo.replica), instance).status == "done"
    tick = tick_approval(instance, master_url, None)

    keys = {replica: partition_key_of(demo.engine, replica) for replica in (demo.replica_id, second, other)}
    assert keys[other] == f"jurgen-gro-oller-{other.replace('-', '')[:8]}"  # ASCII letters, digits and dashes
    assert keys[demo.replica_id].startswith("alex-field-") and keys[second].startswith("alex-field-")
    assert len(set(keys.values())) == 3
    assert {replica_id_of_partition(demo.engine, key) for key in keys.values()} == set(keys)
    # The loaded replica is retired: its partition is deleted, the two still out stay (and are added).
    requested = {type(r).__name__: set(r.partition_keys) for r in tick.dynamic_partitions_requests}
    assert requested == {
        "AddDynamicPartitionsRequest": {keys[second], keys[other]},
        "DeleteDynamicPartitionsRequest": {keys[demo.replica_id]},
    }
    for request in tick.dynamic_partitions_requests:
        if isinstance(request, dg.DeleteDynamicPartitionsRequest):
            instance.delete_dynamic_partition(REPLICAS_PARTITION_NAME, next(iter(request.partition_keys)))
        else:
            instance.add_dynamic_partitions(REPLICAS_PARTITION_NAME, list(request.partition_keys))
    assert set(instance.get_dynamic_partitions(REPLICAS_PARTITION_NAME)) == {keys[second], keys[other]}
    # Its history stays: the runs, and the session on the master.
    assert {run.tags["dagster/partition"] for run in instance.get_runs()} == {keys[demo.replica_id]}


def test_launching_a_retired_replica_fails_with_the_reason(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)
    assert materialize_sync(master_url, str(demo.replica), instance).status == "done"
    before = whole_master(demo.engine)

    again = (
        build_definitions(master_url)
        .resolve_job_def(DETECT_JOB_NAME)
        .execute_in_process(instance=instance, partition_key=demo.partition, raise_on_error=False)
    )

    assert not again.success
    [failure] = [e for e in again.all_events if e.is_step_failure]
    user_failure = failure.step_failure_data.user_failure_data
    assert user_failure is not None, "a readable Failure, not an exception with a stack trace"
    assert "was synchronised and retired" in (user_failure.description or "")
    assert "Alex Field" in (user_failure.description or "")
    assert whole_master(demo.engine) == before


# --- 17.4: run keys that deduplicate across the CLI and the sensors -----------------------------


def test_one_dropped_file_gets_one_detect_run(master_url: str, tmp_path: Path, instance: dg.DagsterInstance) -> None:
    demo = build_demo(master_url, tmp_path / "replicas")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    shutil.copy2(demo.replica, inbox / "alex.db")
    settle(inbox)

    first = tick_inbox(instance, master_url, inbox, None)
    overlapping = tick_inbox(instance, master_url, inbox, None)  # a tick that did not see the first's cursor

    [request] = first.run_requests
    assert [r.run_key for r in overlapping.run_requests] in ([], [request.run_key])
    instance.add_dynamic_partitions(REPLICAS_PARTITION_NAME, [demo.partition])
    launch(instance, master_url, DETECT_JOB_NAME, request)  # freezes the replica: the file changes

    assert not tick_inbox(instance, master_url, inbox, first.cursor).run_requests
    fresh = tick_inbox(instance, master_url, inbox, None)  # even a sensor that lost its cursor
    assert not fresh.run_requests
    assert "has its sync_detect run already" in (fresh.skip_reason.skip_message or "")
    assert len(runs_of(instance, DETECT_JOB_NAME)) == 1


def test_sensor_first_then_cli_sync_never_both_load(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas")
    waiting = materialize_sync(master_url, str(demo.replica), instance)
    assert waiting.session_id
    decide_module(demo.engine, waiting.session_id, "crm", "local", "Tess Tester")

    [request] = tick_approval(instance, master_url, None).run_requests  # the sensor claims this load
    cli = materialize_sync(master_url, str(demo.replica), instance)  # before the daemon created the run

    assert cli.status == "waiting" and "approval_sensor" in cli.message
    assert runs_of(instance, APPLY_JOB_NAME) == []
    # The CLI's run detected again and stopped before its load: no claim, no materialization of master_load.
    cli_run = runs_of(instance, SYNC_JOB_NAME)[0]
    assert cli_run.status == dg.DagsterRunStatus.SUCCESS and APPLY_KEY_TAG not in cli_run.tags
    assert not [
        e
        for e in instance.get_records_for_run(cli_run.run_id).records
        if e.event_log_entry.dagster_event_type == dg.DagsterEventType.ASSET_MATERIALIZATION
        and e.event_log_entry.dagster_event.asset_key == dg.AssetKey("master_load")
    ]
    assert open_session_of(demo.engine, demo.replica_id)["status"] == "ready"  # what the CLI said: not loaded
    launch(instance, master_url, APPLY_JOB_NAME, request)
    assert [r.tags[APPLY_KEY_TAG] for r in runs_of(instance, APPLY_JOB_NAME)] == [request.run_key]
    assert open_session_of(demo.engine, demo.replica_id) is None


def test_cli_first_then_sensor_never_both_load(master_url: str, tmp_path: Path, instance: dg.DagsterInstance) -> None:
    demo = build_demo(master_url, tmp_path / "replicas")
    waiting = materialize_sync(master_url, str(demo.replica), instance)
    assert waiting.session_id
    decide_module(demo.engine, waiting.session_id, "crm", "local", "Tess Tester")
    version = open_session_of(demo.engine, demo.replica_id)["decision_version"]

    # The CLI's sync claims the load (as materialize_sync does) and has not created its run yet.
    assert claim_cli_apply(demo.engine, instance, waiting.session_id, version) is not None
    tick = tick_approval(instance, master_url, None)

    assert not tick.run_requests
    # A second claim of the same load fails too: exactly one launcher wins.
    assert claim_cli_apply(demo.engine, instance, waiting.session_id, version) is None


# --- 11.6: the inbox takes only regular files of the service's user, through a private spool -------


def test_inbox_refuses_links_and_never_touches_their_targets(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)
    # Another person's replica, somewhere the attacker can name but not write.
    (tmp_path / "bob").mkdir()
    victim = checkout(demo.engine, tmp_path / "bob" / "bob.db", "Bob Other")
    victim_file = tmp_path / "bob" / "bob.db"
    victim_bytes = victim_file.read_bytes()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "evil.db").symlink_to(victim_file)
    os.link(victim_file, inbox / "hardlink.db")
    settle(inbox)
    before = whole_master(demo.engine)

    result = tick_inbox(instance, master_url, inbox, None)

    assert not result.run_requests
    message = result.skip_reason.skip_message or ""
    assert "evil.db: a symbolic link" in message
    assert "hardlink.db: has 2 hard links" in message
    assert (inbox / "evil.db").is_symlink() and (inbox / "hardlink.db").exists()  # left in place
    assert victim_file.read_bytes() == victim_bytes
    assert whole_master(demo.engine) == before
    assert open_session_of(demo.engine, victim.replica_id) is None
    spool = inbox / ".spool"
    assert spool.is_dir() and (spool.stat().st_mode & 0o777) == 0o700 and not any(spool.iterdir())
    # Reported once, not on every tick.
    assert not tick_inbox(instance, master_url, inbox, result.cursor).skip_reason.skip_message.startswith("refused")


@pytest.mark.skipif(os.geteuid() != 0, reason="making a file of another user needs root")
def test_inbox_refuses_another_users_file(master_url: str, tmp_path: Path, instance: dg.DagsterInstance) -> None:
    demo = build_demo(master_url, tmp_path / "replicas")
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    planted = inbox / "planted.db"
    shutil.copy2(demo.replica, planted)
    os.chown(planted, 65534, 65534)
    settle(inbox)

    result = tick_inbox(instance, master_url, inbox, None)

    assert not result.run_requests
    assert "planted.db: owned by uid 65534" in (result.skip_reason.skip_message or "")
    assert planted.exists() and open_session_of(demo.engine, demo.replica_id) is None


def test_inbox_refuses_a_spool_planted_as_a_link(master_url: str, tmp_path: Path, instance: dg.DagsterInstance) -> None:
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir()
    (inbox / ".spool").symlink_to(elsewhere)
    shutil.copy2(demo.replica, inbox / "alex.db")
    settle(inbox)

    result = tick_inbox(instance, master_url, inbox, None)

    assert not result.run_requests
    assert "cannot be used" in (result.skip_reason.skip_message or "")
    assert (inbox / "alex.db").exists() and not any(elsewhere.iterdir())


# --- 17.5: an empty DAGSTER_HOME gets its dagster.yaml --------------------------------------------


def test_an_empty_dagster_home_gets_its_instance_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "dagster_home"
    home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(home))

    with sync_instance() as instance:
        assert instance.get_settings("telemetry") == {"enabled": False}
        assert instance.nux_enabled is False
    config = (home / "dagster.yaml").read_text()
    assert "telemetry:\n  enabled: false" in config and "nux:\n  enabled: false" in config

    # A dagster.yaml of the team's own is never replaced.
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: true\n")
    with sync_instance():
        pass
    assert (home / "dagster.yaml").read_text() == "telemetry:\n  enabled: true\n"
