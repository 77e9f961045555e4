"""One run driver (engine/run_driver.py) behind every shell: a Dagster sync opens and verifies its
replica once per run, and a refusal is the same error, type, problem and fix, through Dagster and
without it (exit 2, the master unchanged)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from sync_pipeline.cli import main
from sync_pipeline.dagster_run import materialize_sync
from sync_pipeline.definitions import build_definitions
from sync_pipeline.defs.failures import as_failure, error_of
from sync_pipeline.defs.jobs import APPLY_JOB_NAME, DETECT_JOB_NAME
from sync_pipeline.defs.partitions import ensure_partition
from sync_pipeline.defs.run_keys import SYNC_JOB_NAME
from sync_pipeline.demo import demo_metadata
from sync_pipeline.engine import replica as replica_module
from sync_pipeline.engine.errors import BadInputError, SettingsError
from sync_pipeline.engine.session import run_sync
from sync_pipeline.engine.session_state import open_session_of
from sync_pipeline.engine.store import sync_session
from sync_pipeline_tests.helpers import make_master, master_state
from sync_pipeline_tests.test_dagster_assets import AUTOMATIC_SETTINGS, build_demo
from sync_pipeline_tests.test_dagster_run_outcome import replica_with_an_unknown_column


@pytest.fixture
def instance() -> Iterator[dg.DagsterInstance]:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def opens_of(path: Path) -> int:
    return replica_module.verified_opens[str(path.resolve())]


def phone_of_contact_1(engine: sa.Engine) -> str:
    contact = demo_metadata().tables["contact"]
    with engine.connect() as conn:
        return conn.execute(sa.select(contact.c.phone).where(contact.c.id == 1)).scalar_one()


def test_a_sync_through_dagster_opens_and_verifies_the_replica_once(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)
    before = opens_of(demo.replica)

    result = materialize_sync(master_url, str(demo.replica), instance)

    assert result.status == "done", result.message
    assert [r.job_name for r in instance.get_runs()] == [SYNC_JOB_NAME]
    # materialize_sync verified it once and held it for the run: no step opened the file again.
    assert opens_of(demo.replica) - before == 1
    assert phone_of_contact_1(demo.engine) == "+49 170 1111111"  # local_wins: loaded


def test_runs_launched_as_the_ui_does_open_the_replica_once_each(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)
    partition = ensure_partition(demo.engine, instance, demo.replica_id)
    definitions = build_definitions()
    os.environ["SYNC_MASTER_URL"] = master_url
    try:
        before = opens_of(demo.replica)
        detect = definitions.resolve_job_def(DETECT_JOB_NAME).execute_in_process(
            instance=instance, partition_key=partition, raise_on_error=False
        )
        assert detect.success
        assert opens_of(demo.replica) - before == 1  # local_changes extracted and detected on one open
        assert open_session_of(demo.engine, demo.replica_id)["status"] == "ready"

        apply = definitions.resolve_job_def(APPLY_JOB_NAME).execute_in_process(
            instance=instance, partition_key=partition, raise_on_error=False
        )
        assert apply.success
        assert opens_of(demo.replica) - before == 2
    finally:
        os.environ.pop("SYNC_MASTER_URL")
    with demo.engine.connect() as conn:
        assert conn.execute(sa.select(sync_session.c.status)).scalars().all() == ["done"]
    assert phone_of_contact_1(demo.engine) == "+49 170 1111111"


def test_bad_input_is_the_same_error_through_dagster_and_without(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    engine = make_master(master_url)
    replica = replica_with_an_unknown_column(engine, tmp_path)
    before = master_state(engine)

    with pytest.raises(BadInputError) as without:
        run_sync(engine, replica)
    assert master_state(engine) == before
    with pytest.raises(BadInputError) as through:
        materialize_sync(master_url, str(replica), instance)
    assert master_state(engine) == before

    assert type(through.value) is type(without.value)
    assert (through.value.problem, through.value.fix) == (without.value.problem, without.value.fix)
    assert str(through.value) == str(without.value)
    assert without.value.fix  # the refusal says how to fix it

    # The command line: the same exit code and the same words on both paths.
    printed = []
    for flags in (["--without-dagster"], []):
        result = CliRunner().invoke(main, ["sync", "--master", master_url, "--replica", str(replica), "--json", *flags])
        assert result.exit_code == 2, result.output
        printed.append(result.output)
    assert printed[0] == printed[1]
    assert f"fix: {without.value.fix}" in printed[0]
    assert master_state(engine) == before


def test_an_error_with_attributes_of_its_own_is_rebuilt_exactly() -> None:
    raised = SettingsError("sync.yaml", 7, "policy", "unknown policy 'loud'", "use manual, local_wins or master_wins")
    failure = as_failure(raised)

    rebuilt = error_of(failure.description, failure.metadata)

    assert type(rebuilt) is SettingsError
    assert str(rebuilt) == str(raised)
    assert (rebuilt.path, rebuilt.line, rebuilt.key) == ("sync.yaml", 7, "policy")
    assert (rebuilt.problem, rebuilt.fix) == (raised.problem, raised.fix)
