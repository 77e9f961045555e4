"""The benchmark scripts run and print their tables (no timing is asserted: figures live in docs/benchmarks.md)."""

import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from sync_pipeline_tests.conftest import require_postgres

ROOT = Path(__file__).resolve().parent.parent


def _bench(script: str, *args: str) -> str:
    """The script's standard output; it must succeed."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / script), *args], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_quick_benchmark_prints_its_table() -> None:
    require_postgres()
    printed = _bench("bench_sync.py", "--quick", "--only", "capture,scaling", "--repeat", "1")
    assert "| figure | ours | baseline | ratio | target | met |" in printed
    assert "replica writes (2,000) with vs without change capture" in printed
    assert "extract+detect 2,000 changes" in printed


def test_capture_benchmark_prints_its_table() -> None:
    require_postgres()
    printed = _bench("bench_capture.py", "--rows", "3000", "--changes", "200", "--repeat", "1")
    assert "PostgreSQL, 3,000 rows, 200 changes per write" in printed
    for write in ("executemany UPDATE", "UPDATE … FROM", "INSERT … SELECT", "DELETE … USING"):
        assert sum(line.startswith(write) and line.count("×") == 2 for line in printed.splitlines()) == 1


def test_protocol_pdf_benchmark_prints_its_table() -> None:
    printed = _bench("bench_protocol_pdf.py", "--quick", "--repeat", "1")
    assert "### PDF protocol of 200 conflicts (2,000 changes" in printed
    assert "| render HTML (baseline) |" in printed and "| render PDF |" in printed


def test_sync_profile_names_where_the_time_goes() -> None:
    require_postgres()
    printed = _bench("bench_sync.py", "--quick", "--profile")
    assert "# one engine sync of 2,000 changes into 50,000 rows (PostgreSQL), under cProfile" in printed
    for step in ("run_driver.py", "extract.py", "(extract_changes)", "(execute_plan)", "(wait)"):
        assert step in printed


def _bench_module(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """A benchmark script imported as a module (registered while the test runs: its dataclasses need it)."""
    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    return module


def test_the_dagster_figure_warms_both_paths_then_alternates_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither path pays a first-time cost the other does not, nor always runs first."""
    from sync_pipeline import dagster_run
    from sync_pipeline.defs import gx_adapter

    bench = _bench_module("bench_sync", monkeypatch)
    ran: list[tuple[str, int, int]] = []

    @contextmanager
    def replica(rows: int, changes: int, *_args: Any, **_kwargs: Any) -> Iterator[tuple[Any, Path, None]]:
        yield SimpleNamespace(url="postgresql://bench", engine=(rows, changes)), tmp_path / "r.db", None

    def materialize(_url: str, _path: str, _instance: Any) -> Any:
        ran.append(("dagster", *current[0]))
        return SimpleNamespace(status="done", message="")

    current: list[tuple[int, int]] = []

    def changed(rows: int, changes: int, *args: Any, **kwargs: Any) -> Any:
        current[:] = [(rows, changes)]
        return replica(rows, changes, *args, **kwargs)

    monkeypatch.setattr(bench, "changed_replica", changed)
    monkeypatch.setattr(bench, "run_sync", lambda engine, _path: ran.append(("engine", *engine)))
    monkeypatch.setattr(dagster_run, "materialize_sync", materialize)
    monkeypatch.setattr(gx_adapter, "warm_up", lambda: None)

    bench.measure_dagster(1_000_000, 10_000, False, tmp_path, repeat=3)

    warm = (bench.WARM_ROWS, bench.WARM_CHANGES)
    full = (1_000_000, 10_000)
    assert ran == [
        ("dagster", *warm),
        ("engine", *warm),
        ("dagster", *full),
        ("engine", *full),
        ("engine", *full),
        ("dagster", *full),
        ("dagster", *full),
        ("engine", *full),
    ]
