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
from pathlib import Path
from typing import Any

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


def test_webserver_serves_the_assets_checks_and_sensors(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "dagster_home").mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dagster_home"), "SYNC_HOME": str(tmp_path / "sync_home")}
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
        answer = ask(port, QUERY)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()

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
        ("master_load", "master_reconciles"): False,
    }
    sensors = {sensor["name"]: sensor["sensorState"]["status"] for sensor in repository["sensors"]}
    assert sensors == {"approval_sensor": "RUNNING", "replica_sensor": "RUNNING"}
    assert {"sync_detect", "sync_apply"} <= {job["name"] for job in repository["jobs"]}
