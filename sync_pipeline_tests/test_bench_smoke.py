"""The benchmark scripts run and prints its table (no timing is asserted: figures live in docs/benchmarks.md)."""

import subprocess
import sys
from pathlib import Path

from sync_pipeline_tests.conftest import require_postgres

ROOT = Path(__file__).resolve().parent.parent


def test_quick_benchmark_prints_its_table() -> None:
    require_postgres()
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "bench_sync.py"),
            "--quick",
            "--only",
            "capture,scaling",
            "--repeat",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "| figure | ours | baseline | ratio | target | met |" in done.stdout
    assert "replica writes (2,000) with vs without change capture" in done.stdout
    assert "extract+detect 2,000 changes" in done.stdout


def test_capture_benchmark_prints_its_table() -> None:
    require_postgres()
    script = ROOT / "bench" / "bench_capture.py"
    command = [sys.executable, str(script), "--rows", "3000", "--changes", "200", "--repeat", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    assert "PostgreSQL, 3,000 rows, 200 changes per write" in done.stdout
    for write in ("executemany UPDATE", "UPDATE … FROM", "INSERT … SELECT", "DELETE … USING"):
        assert sum(line.startswith(write) and line.count("×") == 2 for line in done.stdout.splitlines()) == 1


def test_protocol_pdf_benchmark_prints_its_table() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench_protocol_pdf.py"), "--quick", "--repeat", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "### PDF protocol of 200 conflicts (2,000 changes" in done.stdout
    assert "| render HTML (baseline) |" in done.stdout and "| render PDF |" in done.stdout
