"""Loading the code location stays light: Great Expectations and pandas are imported only by the checks
when they run, and loading needs no master."""

import subprocess
import sys
from pathlib import Path

import dagster as dg

REPO = Path(__file__).resolve().parent.parent


def test_loading_the_code_location_imports_neither_great_expectations_nor_pandas(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "import sync_pipeline.definitions as d\n"
        "assert d.defs is not None\n"
        "print(sorted(m for m in ('great_expectations', 'pandas') if m in sys.modules))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "SYNC_HOME": str(tmp_path / "no-home-yet"), "HOME": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
    assert not (tmp_path / "no-home-yet").exists(), "loading must not create the master's folder"


def test_definitions_hold_the_sync_graph() -> None:
    from sync_pipeline.definitions import defs

    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == {
        "local_changes",
        "conflicts",
        "resolutions",
        "master_load",
        "sync_protocol",
        "sync_protocol_pdf",
        "offline_replicas",
    }
    groups = {key.to_user_string(): graph.get(key).group_name for key in graph.get_all_asset_keys()}
    assert groups == {**{k: "sync" for k in keys - {"offline_replicas"}}, "offline_replicas": "overview"}
    upstream = {
        key.to_user_string(): {p.to_user_string() for p in graph.get(key).parent_keys}
        for key in graph.get_all_asset_keys()
        if groups[key.to_user_string()] == "sync"
    }
    assert upstream == {
        "local_changes": set(),
        "conflicts": {"local_changes"},
        "resolutions": {"conflicts"},
        "master_load": {"resolutions"},
        "sync_protocol": {"master_load"},
        "sync_protocol_pdf": {"sync_protocol"},
    }
    assert {job.name for job in defs.resolve_all_job_defs()} >= {"sync_detect", "sync_apply", "sync_purge"}
    assert {schedule.name for schedule in defs.schedules or []} == {"sync_purge_schedule"}
    assert {sensor.name for sensor in defs.sensors or []} == {"approval_sensor", "replica_sensor"}
