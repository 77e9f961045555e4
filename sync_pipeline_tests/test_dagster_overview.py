"""The master-side overview in Dagster: the offline-replicas table, the protocol files of a sync, and the
retention purge job with its daily schedule."""

from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from sync_pipeline.dagster_run import materialize_sync
from sync_pipeline.definitions import build_definitions
from sync_pipeline.defs.assets import sync_protocol
from sync_pipeline.defs.overview import offline_replicas, purge_schedule
from sync_pipeline.defs.protocol_pdf import sync_protocol_pdf
from sync_pipeline.engine import store
from sync_pipeline.engine.checkout import checkout
from sync_pipeline_tests.test_dagster_assets import AUTOMATIC_SETTINGS, build_demo, latest_metadata


@pytest.fixture
def instance() -> dg.DagsterInstance:
    with dg.instance_for_test() as test_instance:
        yield test_instance


def test_offline_replicas_table_lists_every_replica_with_its_status(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)
    checkout(demo.engine, tmp_path / "replicas" / "bea.db", "Bea Road", ["sales"])
    assert materialize_sync(master_url, str(demo.replica), instance).status == "done"

    defs = build_definitions(master_url)
    result = dg.materialize([offline_replicas], resources=defs.resources, instance=instance)
    assert result.success
    materialization = instance.get_latest_materialization_event(offline_replicas.key).asset_materialization
    metadata = {key: value.value for key, value in materialization.metadata.items()}
    rows = {r.data["owner"]: r.data for r in metadata["replicas"].records}
    assert rows["Alex Field"]["status"] == "retired" and rows["Alex Field"]["modules"] == "crm, sales"
    assert rows["Bea Road"]["status"] == "offline" and rows["Bea Road"]["modules"] == "sales"
    assert metadata["out"] == 1 and metadata["status/retired"] == 1


def test_sync_protocol_asset_writes_and_links_every_format(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)
    result = materialize_sync(master_url, str(demo.replica), instance)
    metadata = latest_metadata(instance, sync_protocol, demo.partition)
    assert metadata["protocol_state"] == "done"
    for fmt in ("json", "md", "html"):
        path = Path(metadata[f"protocol_{fmt}"])
        assert path.is_file() and result.session_id in path.name
    # The PDF is laid out outside the sync's run, when its own asset is materialized.
    assert "protocol_pdf" not in metadata
    defs = build_definitions(master_url)
    printed = dg.materialize(
        [sync_protocol_pdf], resources=defs.resources, instance=instance, partition_key=demo.partition
    )
    assert printed.success
    pdf = Path(latest_metadata(instance, sync_protocol_pdf, demo.partition)["protocol_pdf"])
    assert result.session_id in pdf.name and pdf.read_bytes().startswith(b"%PDF")


def test_purge_job_removes_old_closed_sessions_and_runs_daily(
    master_url: str, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    demo = build_demo(master_url, tmp_path / "replicas", AUTOMATIC_SETTINGS)
    session = materialize_sync(master_url, str(demo.replica), instance).session_id
    with demo.engine.begin() as conn:
        conn.execute(
            sa.update(store.sync_session).values(started_at="2020-01-01T00:00:00", finished_at="2020-01-01T00:00:01")
        )
    defs = build_definitions(master_url)
    job = defs.get_job_def("sync_purge")
    assert job.execute_in_process(instance=instance).success
    with demo.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(store.sync_session)).scalar_one() == 0
        assert (
            conn.execute(
                sa.select(sa.func.count())
                .select_from(store.sync_change)
                .where(store.sync_change.c.session_id == session)
            ).scalar_one()
            == 0
        )
    assert purge_schedule.cron_schedule == "30 3 * * *"
    assert purge_schedule.default_status == dg.DefaultScheduleStatus.RUNNING
