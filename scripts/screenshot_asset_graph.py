"""Take the screenshots of the Dagster UI in docs/: the sync asset graph (docs/asset_graph.png), the
`overview` group, the sync_detect job, the Runs list and the checks of `resolutions` (docs/dagster-*.png).

Builds the demo (master, replica, edits on both sides) in a throw-away SYNC_HOME, synchronises it
through the Dagster graph (detect, a person's decisions, apply) into a throw-away, empty DAGSTER_HOME
(the code writes its dagster.yaml, as for a new user), starts dagster-webserver on a free loopback
port, and photographs each page with headless Chromium from Debian's `chromium` package (installed
with apt-get when missing and running as root).

    .venv/bin/python scripts/screenshot_asset_graph.py [--out-dir docs]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
LOCATION = "/locations/sync_pipeline.definitions"
# (file in docs/, page, width, height): while the demo session waits for a person...
WAITING_PAGES = [
    ("dagster-runs.png", "/runs", 1900, 420),
    ("dagster-waiting-check.png", "/assets/resolutions?view=checks&checkDetail=no_manual_decisions_pending", 1600, 820),
]
# ...and after the decisions and the load.
DONE_PAGES = [
    ("asset_graph.png", f"{LOCATION}/asset-groups/sync", 1900, 560),
    ("dagster-detect-job.png", f"{LOCATION}/jobs/sync_detect", 1600, 520),
    ("dagster-overview.png", "/assets/offline_replicas", 1600, 760),
]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def ensure_chromium() -> str:
    if Path(CHROMIUM).exists():
        return CHROMIUM
    if os.geteuid() != 0:
        sys.exit(f"{CHROMIUM} is missing: install it with `sudo apt-get install -y chromium`")
    subprocess.run(["apt-get", "install", "-y", "chromium"], check=True)
    return CHROMIUM


def sync_until_waiting(sync_home: Path) -> tuple[str, Path, str]:
    """The demo's detect run: (master URL, replica, session id) of a session waiting for a person."""
    from sync_pipeline.dagster_run import materialize_sync
    from sync_pipeline.demo import make_demo_edits, prepare_demo
    from sync_pipeline.engine.master import connect_master

    paths = prepare_demo(sync_home, "Alex Field")
    engine = connect_master(paths.master_url)
    try:
        make_demo_edits(engine, paths.replica)
    finally:
        engine.dispose()
    waiting = materialize_sync(paths.master_url, str(paths.replica))
    if waiting.status != "waiting" or waiting.session_id is None:
        sys.exit(f"the demo sync should wait for decisions, but it is {waiting.status}: {waiting.message}")
    return paths.master_url, paths.replica, waiting.session_id


def decide_and_finish(master_url: str, replica: Path, session_id: str) -> None:
    """A reviewer's decisions, the load, and a refreshed `offline_replicas` table."""
    import dagster as dg

    from sync_pipeline.dagster_run import materialize_sync
    from sync_pipeline.defs.overview import offline_replicas
    from sync_pipeline.defs.resources import MasterDatabase
    from sync_pipeline.engine.master import connect_master
    from sync_pipeline.engine.session import decide_module, pending_of

    engine = connect_master(master_url)
    try:
        for module in pending_of(engine, session_id):
            decide_module(engine, session_id, module, "local", "Demo Reviewer")
    finally:
        engine.dispose()
    done = materialize_sync(master_url, str(replica))
    if done.status != "done":
        sys.exit(f"the demo sync did not finish: {done.status}: {done.message}")
    with dg.DagsterInstance.get() as instance:
        dg.materialize([offline_replicas], instance=instance, resources={"master": MasterDatabase()})


@contextmanager
def webserver() -> Iterator[int]:
    port = free_port()
    command = shutil.which("dagster-webserver", path=str(Path(sys.executable).parent)) or "dagster-webserver"
    server = subprocess.Popen(
        [command, "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_webserver(port, server)
        yield port
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


def wait_for_webserver(port: int, server: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"dagster-webserver exited with code {server.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    sys.exit(f"dagster-webserver did not answer on port {port} within {timeout:.0f} s")


def screenshot(chromium: str, url: str, out: Path, profile: Path, width: int, height: int) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
        # Virtual time lets the page finish its GraphQL requests and layout before the picture.
        "--virtual-time-budget=20000",
        f"--screenshot={out}",
        url,
    ]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    chromium = ensure_chromium()
    with tempfile.TemporaryDirectory(prefix="sync_screenshot_") as scratch:
        root = Path(scratch)
        sync_home, dagster_home = root / "sync_home", root / "dagster_home"
        dagster_home.mkdir()  # empty: `sync` writes its dagster.yaml (telemetry and the newsletter off)
        os.environ.update({"SYNC_HOME": str(sync_home), "DAGSTER_HOME": str(dagster_home)})
        os.environ.pop("SYNC_MASTER_URL", None)
        waiting = sync_until_waiting(sync_home)
        for pages in (WAITING_PAGES, DONE_PAGES):
            if pages is DONE_PAGES:
                decide_and_finish(*waiting)
            with webserver() as port:
                for name, page, width, height in pages:
                    out = (args.out_dir / name).resolve()
                    screenshot(chromium, f"http://127.0.0.1:{port}{page}", out, root / "chromium", width, height)
                    print(f"wrote {out}")


if __name__ == "__main__":
    main()
