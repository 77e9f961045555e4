"""What loading the code location imports. Every run launched from the UI or a sensor is a fresh process
that loads it again, as does every code server start: building the graph must not drag in the heavy
libraries that only some steps use (checks, protocol renderers, the review page, the PDF). Checked by
`sys.modules` in a fresh interpreter, not by timing."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Imported by the steps that need them, when they run: the checks (GX, pandas, numpy, scipy, altair),
# the PDF (fpdf), the review page (starlette, uvicorn), columnar work (pyarrow), the Celery
# executor of the production deployment (celery, dagster_celery).
HEAVY = (
    "great_expectations",
    "pandas",
    "numpy",
    "scipy",
    "altair",
    "pyarrow",
    "fpdf",
    "starlette",
    "uvicorn",
    "celery",
    "dagster_celery",
)


def test_loading_the_code_location_leaves_the_heavy_libraries_to_the_steps(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "import sync_pipeline.definitions as d\n"
        "assert d.defs.resolve_job_def('sync') is not None\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "SYNC_HOME": str(tmp_path / "home"), "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == []


def test_the_first_check_of_a_run_imports_great_expectations_there(tmp_path: Path) -> None:
    """The other side of the same rule: the validation itself does import GX (and is the step that pays it),
    so the probe above would notice a check that stopped validating with GX, not only an import too many."""
    probe = (
        "import sys\n"
        "from sync_pipeline.defs.gx_adapter import ExpectationSpec, FrameSuite, validate\n"
        "assert 'great_expectations' not in sys.modules\n"
        "suite = FrameSuite('t', ['id'], [{'id': 1}, {'id': None}], "
        "[ExpectationSpec('expect_column_values_to_not_be_null', {'column': 'id'})])\n"
        "report = validate([suite])\n"
        "print(report.evaluated, report.successful, 'great_expectations' in sys.modules)\n"
    )
    env = {"PATH": "/usr/bin:/bin", "SYNC_HOME": str(tmp_path / "home"), "HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", "0", "True"]
