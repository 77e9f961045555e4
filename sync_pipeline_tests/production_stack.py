"""The production stack on this machine, for tests and the concurrency benchmark: Dagster's storage in a fresh
PostgreSQL database, the dagster-daemon (sensors, run queue) and dagster-celery workers, every process
in a process group of its own and stopped (SIGTERM, then SIGKILL) however the caller ends: through its
`finally` blocks (an exception, a failed assertion, SIGTERM), or by a watchdog process when the caller
was killed outright."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import sqlalchemy as sa
from dagster_postgres import DagsterPostgresStorage

from sync_pipeline.cli_deploy import DEPLOY_FOLDER, write_deploy_home
from sync_pipeline.defs.executor import DEFAULT_BACKEND, DEFAULT_BROKER

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG_ADMIN_URL = os.environ.get("SYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
DEFAULT_PORTS = {"pyamqp": 5672, "amqp": 5672, "redis": 6379}
WORKER_PRELOAD = "sync_pipeline.defs.celery_worker"  # imported before the pool forks (deploy/README.md)


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False


def unreachable_services() -> list[str]:
    """The broker and result backend the stack's executor and workers use (defs/executor.py) that do not
    answer, each as `what at host:port`. `rpc://` results travel over the broker itself."""
    missing = []
    for what, url in (
        ("the Celery broker", os.environ.get("SYNC_CELERY_BROKER", DEFAULT_BROKER)),
        ("the Celery result backend", os.environ.get("SYNC_CELERY_BACKEND", DEFAULT_BACKEND)),
    ):
        parsed = urlsplit(url)
        if parsed.scheme == "rpc":
            continue
        host, port = parsed.hostname or "127.0.0.1", parsed.port or DEFAULT_PORTS.get(parsed.scheme, 0)
        if not reachable(host, port):
            missing.append(f"{what} at {host}:{port} ({parsed.scheme})")
    return missing


@dataclass
class Stack:
    home: Path  # DAGSTER_HOME
    env: dict[str, str]  # the environment every process of the stack runs with
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def groups_file(self) -> Path:
        return self.logs / "process_groups"

    def start(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            args, cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self.processes[name] = process
        with open(self.groups_file, "a", encoding="utf-8") as groups:
            groups.write(f"{process.pid}\n")
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
                "-i",
                WORKER_PRELOAD,
                "-q",
                self.env["SYNC_CELERY_QUEUE"],
                "-n",
                f"{name}.{self.env['SYNC_CELERY_QUEUE']}@%h",  # unique on the broker: stacks may run side by side
                "--",
                f"--concurrency={concurrency}",
            ],
        )

    def start_code_server(self, workspace: Path, timeout: float = 180) -> Path:
        """The code location's gRPC server, started once and kept (deploy/README.md), and a workspace file
        naming it. The daemon started with `-w workspace.yaml` (a `python_module`) would instead start a
        server of its own and replace it every minute, importing the code location each time."""
        with socket.socket() as probe:  # a free port, released for the server
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        template = (DEPLOY_FOLDER / "workspace.yaml").read_text(encoding="utf-8")
        workspace.write_text(template.replace("port: 4266", f"port: {port}"), encoding="utf-8")
        server = self.start(
            "code_server",
            [
                str(BIN / "dagster"),
                "api",
                "grpc",
                "-m",
                "sync_pipeline.definitions",
                "-h",
                "127.0.0.1",
                "-p",
                str(port),
            ],
        )
        deadline = time.monotonic() + timeout
        while not reachable("127.0.0.1", port):  # it listens once the code location is loaded
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the code server did not start:\n{self.log_tail('code_server')}")
            time.sleep(0.5)
        return workspace

    def dead(self) -> list[str]:
        return [f"{name} (exit {p.returncode})" for name, p in self.processes.items() if p.poll() is not None]

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / f"{name}.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    def stop(self) -> None:
        with suppress(FileNotFoundError):
            self.groups_file.unlink()  # the watchdog's sign that the stack was stopped by its owner
        for process in self.processes.values():
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes.values():
            with suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            _signal_group(process, signal.SIGKILL)  # the group's children (celery's pool, code servers) too
            process.wait(timeout=10)


# Kills the stack's process groups if the process that started them dies without stopping them (SIGKILL,
# a CI job's timeout): it polls its parent and exits quietly once `Stack.stop` removed the groups file.
_WATCHDOG = """
import os, signal, sys, time
parent, groups = int(sys.argv[1]), sys.argv[2]
while os.path.exists(groups):
    try:
        os.kill(parent, 0)
    except ProcessLookupError:
        for line in open(groups).read().split():
            try:
                os.killpg(int(line), signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        break
    time.sleep(2)
"""


def _start_watchdog(groups: Path) -> subprocess.Popen[bytes]:
    groups.write_text("", encoding="utf-8")
    return subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(groups)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _report_cpu(logs: Path, before: float) -> None:
    """The CPU seconds the stack's processes used (and the processes they waited for: pool processes, runs):
    what its work costs whatever else runs on the machine; on an idle 2-core machine, wall >= CPU / 2."""
    seconds = _children_cpu() - before
    (logs / "cpu_seconds").write_text(f"{seconds:.1f}\n", encoding="utf-8")
    print(f"\nproduction stack: {seconds:.0f} CPU seconds in its processes (logs: {logs})")


def _end_watchdog(watchdog: subprocess.Popen[bytes]) -> None:
    try:
        watchdog.wait(timeout=10)  # it exits within 2 s of the groups file's removal
    except subprocess.TimeoutExpired:
        watchdog.kill()
        watchdog.wait()


@contextmanager
def _sigterm_raises() -> Iterator[None]:
    """SIGTERM (a CI timeout, `kill`) ends the caller through its `finally` blocks, which stop the stack,
    instead of ending the process where it stands (Python's default)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
        rendered = url.render_as_string(hide_password=False)
        # Dagster's tables, made here once: the code server, the daemon and the worker would otherwise all
        # create them at their start and retry on each other's half-made schema.
        DagsterPostgresStorage(postgres_url=rendered).event_log_storage.dispose()
        yield rendered
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
        stack.callback(_report_cpu, logs, _children_cpu())  # after the stop: the processes were waited for
        stack.enter_context(_sigterm_raises())
        watchdog = _start_watchdog(running.groups_file)
        stack.callback(_end_watchdog, watchdog)
        stack.callback(running.stop)
        for number in range(workers):
            running.start_worker(f"worker{number}", concurrency)
        workspace = running.start_code_server(folder / "workspace.yaml")
        running.start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(workspace)])
        yield running
