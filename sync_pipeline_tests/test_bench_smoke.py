"""The benchmark scripts run and print their tables (no timing is asserted: figures live in docs/benchmarks.md)."""

import subprocess
import sys
from pathlib import Path

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
