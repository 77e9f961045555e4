"""The production stack on this machine, for tests and the concurrency benchmark: Dagster's storage in a fresh
PostgreSQL database, the dagster-daemon (sensors, run queue) and dagster-celery workers, every process
in a process group of its own and stopped (SIGTERM, then SIGKILL) however the caller ends."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import sqlalchemy as sa

from sync_pipeline.cli_deploy import DEPLOY_FOLDER, write_deploy_home

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("SYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BROKER_HOST, BROKER_PORT = "127.0.0.1", 5672


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


@dataclass
class Stack:
    home: Path  # DAGSTER_HOME
    env: dict[str, str]  # the environment every process of the stack runs with
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.processes[name] = process
        return process

    def start_worker(self, name: str, concurrency: int) -> subprocess.Popen[bytes]:
        return self.start(
            name,
            [
                str(BIN / "dagster-celery"),
                "worker",
                "start",
                "-A",
                "dagster_celery.app",
                "-y",
                str(DEPLOY_FOLDER / "celery.yaml"),
                "-q",
                self.env["SYNC_CELERY_QUEUE"],
                "-n",
                name,
                "--",
                f"--concurrency={concurrency}",
            ],
        )

    def dead(self) -> list[str]:
        return [f"{name} (exit {p.returncode})" for name, p in self.processes.items() if p.poll() is not None]

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        for process in self.processes.values():
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes.values():
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            _signal_group(process, signal.SIGKILL)  # the group's children (celery's pool, code servers) too
            process.wait(timeout=10)


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, sig)  # the group this process leads (start_new_session): only ours


@contextmanager
def dagster_database() -> Iterator[str]:
    """A fresh PostgreSQL database for Dagster's runs, events and schedules; dropped afterwards."""
    name = f"dagster_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))  # a generated name, no input
    url = sa.engine.make_url(PG_ADMIN_URL).set(drivername="postgresql", database=name)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def production_stack(
    folder: Path, master_url: str, inbox: Path, workers: int = 1, concurrency: int = 4, max_runs: int = 4
) -> Iterator[Stack]:
    """The daemon and `workers` Celery workers (each `concurrency` processes) on a fresh Dagster database,
    with at most `max_runs` runs at a time, syncing replicas dropped into `inbox` into `master_url`."""
    with ExitStack() as stack:
        storage_url = stack.enter_context(dagster_database())
        home = folder / "dagster_home"
        write_deploy_home(home, max_runs=max_runs)
        logs = folder / "logs"
        logs.mkdir(exist_ok=True)
        env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(REPO),
            "DAGSTER_HOME": str(home),
            "DAGSTER_POSTGRES_URL": storage_url,
            "SYNC_MASTER_URL": master_url,
            "SYNC_HOME": str(folder / "sync_home"),
            "SYNC_INBOX": str(inbox),
            "SYNC_EXECUTOR": "celery",
            "SYNC_CELERY_QUEUE": f"sync-test-{uuid.uuid4().hex[:8]}",
            "SYNC_SENSOR_INTERVAL_SECONDS": "3",
        }
        env.pop("SYNC_FAULT", None)
        running = Stack(home, env, logs)
        stack.callback(running.stop)
        for number in range(workers):
            running.start_worker(f"worker{number}", concurrency)
        running.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"])
        yield running
