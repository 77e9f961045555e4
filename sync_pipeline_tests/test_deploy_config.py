"""The production deployment's pieces that need no running daemon: deploy/dagster.yaml loads as a Dagster
instance on PostgreSQL storage with the queue's limits, `deploy-home` writes it, the Celery executor is
chosen by SYNC_EXECUTOR only, and sync runs carry the tags the limits match."""

from __future__ import annotations

import importlib
from pathlib import Path

import dagster as dg
import pytest
import yaml
from click.testing import CliRunner

from sync_pipeline.cli import main
from sync_pipeline.definitions import build_definitions
from sync_pipeline.defs.executor import sync_executor
from sync_pipeline.defs.run_tags import LOAD_MASTER_TAG, MASTER_TAG, STAGE_TAG, stage_tags
from sync_pipeline.engine import store
from sync_pipeline_tests.conftest import require_postgres
from sync_pipeline_tests.helpers import make_master
from sync_pipeline_tests.production_stack import dagster_database


def test_deploy_home_is_a_postgres_instance_with_a_limited_queue(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_postgres()
    home = tmp_path / "dagster_prod"
    result = CliRunner().invoke(main, ["deploy-home", "--home", str(home), "--max-runs", "3"])
    assert result.exit_code == 0, result.output
    assert (home.stat().st_mode & 0o777) == 0o700
    again = CliRunner().invoke(main, ["deploy-home", "--home", str(home)])
    assert again.exit_code == 2 and "--force" in again.output  # an operator's edited file is not replaced
    with dagster_database() as storage_url:
        monkeypatch.setenv("DAGSTER_POSTGRES_URL", storage_url)
        instance = dg.DagsterInstance.from_config(str(home))
        try:
            assert type(instance.run_storage).__name__ == "PostgresRunStorage"
            assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
            assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
            coordinator = instance.run_coordinator
            assert type(coordinator).__name__ == "QueuedRunCoordinator"
            assert coordinator.get_run_queue_config().max_concurrent_runs == 3
            limits = {
                (limit["key"], str(limit.get("value"))): limit["limit"]
                for limit in coordinator.get_run_queue_config().tag_concurrency_limits
            }
            assert limits[(STAGE_TAG, "detect")] == 3
            assert limits[(LOAD_MASTER_TAG, "{'applyLimitPerUniqueValue': True}")] == 3
            assert instance.run_retries_enabled and instance.run_monitoring_enabled
        finally:
            instance.dispose()


def test_celery_executor_only_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SYNC_EXECUTOR", raising=False)
    assert sync_executor() is None  # the embedded default: Dagster's own executor, the CLI in-process
    monkeypatch.setenv("SYNC_EXECUTOR", "celery")
    executor = sync_executor()
    assert executor is not None and executor.name == "celery"
    job = build_definitions().resolve_job_def("sync_detect")
    assert job.executor_def.name == "celery"
    monkeypatch.setenv("SYNC_EXECUTOR", "dask")
    with pytest.raises(ValueError, match="SYNC_EXECUTOR"):
        sync_executor()


def test_stage_tags_name_the_master_not_its_url(backend: str, master_url: str) -> None:
    engine = make_master(master_url)
    master_id = store.read_meta(engine)["master_id"]
    assert stage_tags(engine, "detect") == {MASTER_TAG: master_id, STAGE_TAG: "detect"}
    assert stage_tags(engine, "load") == {MASTER_TAG: master_id, STAGE_TAG: "load", LOAD_MASTER_TAG: master_id}
    engine.dispose()


def _helm_values() -> dict:
    readme = (Path(__file__).resolve().parents[1] / "deploy" / "README.md").read_text()
    block = readme.split("# values.yaml for `helm upgrade", 1)[1].split("```", 1)[0]
    return yaml.safe_load(block.split("\n", 1)[1])


def test_helm_values_run_this_code_location_with_the_queue_limits() -> None:
    values = _helm_values()
    [deployment] = values["dagster-user-deployments"]["deployments"]
    module = deployment["dagsterApiGrpcArgs"][deployment["dagsterApiGrpcArgs"].index("--module-name") + 1]
    assert importlib.import_module(module).defs is not None  # the code location the chart's gRPC server loads
    # A run pod runs its steps itself: the launcher's class is installed, and no Celery executor is asked for.
    launcher = values["runLauncher"]
    assert launcher["type"] == "K8sRunLauncher"
    from dagster_k8s import K8sRunLauncher  # noqa: F401 - the deploy extra brings it

    env = launcher["config"]["k8sRunLauncher"]["envVars"] + [e["name"] for e in deployment["env"]]
    assert not any(str(e).startswith("SYNC_EXECUTOR") for e in env)
    limits = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"]
    assert {limit["key"] for limit in limits} == {STAGE_TAG, LOAD_MASTER_TAG}
