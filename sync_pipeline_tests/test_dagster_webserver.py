"""The code location as the UI sees it: dagster-webserver on a free loopback port, asked over GraphQL
for the sync assets, their blocking checks and the sensors."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from sync_pipeline.dagster_run import materialize_sync
from sync_pipeline.links import review_session_url

REPO = Path(__file__).resolve().parent.parent

QUERY = """
{
  repositoriesOrError {
    __typename
    ... on RepositoryConnection {
      nodes {
        location { name }
        jobs { name }
        sensors { name sensorState { status } }
        assetNodes {
          assetKey { path }
          groupName
          isPartitioned
          assetChecksOrError { ... on AssetChecks { checks { name blocking } } }
        }
      }
    }
  }
}
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ask(port: int, query: str) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def wait_until_serving(port: int, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 180  # a limit for a hung start, not a timing assertion
    while time.monotonic() < deadline:
        assert server.poll() is None, f"dagster-webserver exited with {server.returncode}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise AssertionError("dagster-webserver did not start")


def stop_process_group(server: subprocess.Popen[bytes]) -> None:
    """Stop a server started in a session of its own, and everything it started (SIGKILL after a minute)."""
    os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@contextmanager
def webserver_on(dagster_home: Path, sync_home: Path) -> Iterator[int]:
    """dagster-webserver on the workspace, serving on the port it yields; stopped afterwards."""
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "SYNC_HOME": str(sync_home)}
    webserver = Path(sys.executable).parent / "dagster-webserver"
    server = subprocess.Popen(
        [str(webserver), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_until_serving(port, server)
        yield port
    finally:
        stop_process_group(server)


def test_webserver_serves_the_assets_checks_and_sensors(tmp_path: Path) -> None:
    (tmp_path / "dagster_home").mkdir()
    with webserver_on(tmp_path / "dagster_home", tmp_path / "sync_home") as port:
        answer = ask(port, QUERY)

    repositories = answer["data"]["repositoriesOrError"]
    assert repositories["__typename"] == "RepositoryConnection", answer
    [repository] = repositories["nodes"]
    assert repository["location"]["name"] == "sync_pipeline.definitions"
    assets = {"/".join(node["assetKey"]["path"]): node for node in repository["assetNodes"]}
    assert set(assets) == {
        "local_changes",
        "conflicts",
        "resolutions",
        "master_load",
        "sync_protocol",
        "sync_protocol_pdf",
        "offline_replicas",
    }
    overview = assets.pop("offline_replicas")
    assert overview["groupName"] == "overview" and not overview["isPartitioned"]
    assert all(node["groupName"] == "sync" and node["isPartitioned"] for node in assets.values())
    checks = {
        (asset, check["name"]): check["blocking"]
        for asset, node in assets.items()
        for check in node["assetChecksOrError"]["checks"]
    }
    assert checks == {
        ("local_changes", "local_changes_match_schema"): True,
        ("local_changes", "local_changes_meet_settings_expectations"): True,
        ("resolutions", "resolutions_all_decided"): True,
        ("resolutions", "decided_values_match_schema"): True,
        ("resolutions", "no_manual_decisions_pending"): False,  # a warning: waiting is not an error
        ("master_load", "master_reconciles"): False,  # after the commit: it reports, it cannot block
    }
    sensors = {sensor["name"]: sensor["sensorState"]["status"] for sensor in repository["sensors"]}
    assert sensors == {"approval_sensor": "RUNNING", "replica_sensor": "RUNNING"}
    assert {"sync_detect", "sync_apply"} <= {job["name"] for job in repository["jobs"]}


WAITING_QUERY = """
{
  shouldShowNux
  runsOrError { ... on Runs { results { jobName status tags { key value } } } }
  assetNodes(assetKeys: [{path: ["resolutions"]}]) {
    partitionKeys
    assetChecksOrError {
      ... on AssetChecks {
        checks {
          name
          executionForLatestMaterialization {
            evaluation {
              severity
              description
              metadataEntries { label ... on UrlMetadataEntry { url } }
            }
          }
        }
      }
    }
  }
}
"""


def test_the_ui_shows_a_waiting_sync_under_a_named_partition_without_the_newsletter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sync_pipeline_tests.test_dagster_assets import build_demo

    dagster_home, sync_home = tmp_path / "dagster_home", tmp_path / "sync_home"
    dagster_home.mkdir()
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    master_url = f"sqlite:///{tmp_path / 'master.db'}"
    demo = build_demo(master_url, tmp_path / "replicas")
    waiting = materialize_sync(master_url, str(demo.replica))
    assert waiting.status == "waiting" and waiting.session_id
    # As a person who starts the UI first finds it: an instance folder without its dagster.yaml.
    (dagster_home / "dagster.yaml").unlink()

    with webserver_on(dagster_home, sync_home) as port:
        ask(port, QUERY)  # the code location has loaded
        answer = ask(port, WAITING_QUERY)["data"]

    assert answer["shouldShowNux"] is False
    assert "nux:\n  enabled: false" in (dagster_home / "dagster.yaml").read_text()
    [run] = answer["runsOrError"]["results"]
    tags = {tag["key"]: tag["value"] for tag in run["tags"]}
    assert (run["jobName"], run["status"], tags["sync/state"]) == ("sync", "SUCCESS", "waiting")
    assert tags["dagster/partition"] == demo.partition
    [node] = answer["assetNodes"]
    assert node["partitionKeys"] == [demo.partition] and demo.partition.startswith("alex-field-")
    checks = {c["name"]: c for c in node["assetChecksOrError"]["checks"]}
    evaluation = checks["no_manual_decisions_pending"]["executionForLatestMaterialization"]["evaluation"]
    assert (evaluation["severity"], evaluation["description"]) == ("WARN", "5 manual decisions pending: crm 5")
    links = {entry["label"]: entry.get("url") for entry in evaluation["metadataEntries"]}
    assert links["review"] == review_session_url(waiting.session_id)
