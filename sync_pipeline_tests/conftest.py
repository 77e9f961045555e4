"""Real databases for every test: SQLite always, PostgreSQL from the running server.

Each PostgreSQL test gets a schema of its own (the URL sets search_path), dropped afterwards. When
no server answers, PostgreSQL tests are skipped locally but fail in CI (CI=true).
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from sync_pipeline.engine.signing_key import drop_key_store

PG_URL = os.environ.get("SYNC_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_pg_reachable: bool | None = None

# The seed of the model-based (hypothesis) tests: new for every run, so that CI explores too, and printed
# in the run's header, so that a failure is reproduced with SYNC_MODEL_SEED=N (or --hypothesis-seed=N).
MODEL_SEED = int(os.environ.get("SYNC_MODEL_SEED") or secrets.randbelow(2**32))


def pytest_configure(config: pytest.Config) -> None:
    global MODEL_SEED
    given = config.getoption("hypothesis_seed", default=None)
    if given is not None:
        MODEL_SEED = int(given)
    # pytest-xdist's workers start after this, from this environment: they all take the controller's seed.
    os.environ["SYNC_MODEL_SEED"] = str(MODEL_SEED)


def pytest_report_header(config: pytest.Config) -> str:
    return f"model-based tests: hypothesis seed {MODEL_SEED} (reproduce with SYNC_MODEL_SEED={MODEL_SEED})"


def _postgres_reachable() -> bool:
    global _pg_reachable
    if _pg_reachable is None:
        try:
            engine = sa.create_engine(PG_URL, connect_args={"connect_timeout": 3})
            with engine.connect():
                pass
            engine.dispose()
            _pg_reachable = True
        except Exception:
            _pg_reachable = False
    return _pg_reachable


def require_postgres() -> None:
    if _postgres_reachable():
        return
    message = f"PostgreSQL is not reachable at {PG_URL}"
    if IN_CI:
        pytest.fail(message + " (CI must have it: PostgreSQL tests never skip in CI)")
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Nothing a test does may touch the user's ~/.sync_pipeline or $SYNC_MASTER_URL.
    monkeypatch.setenv("SYNC_HOME", str(tmp_path / "sync_home"))
    monkeypatch.delenv("SYNC_MASTER_URL", raising=False)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@contextmanager
def fresh_master_url(backend: str, folder: Path, prefix: str = "t") -> Iterator[str]:
    """An empty master: a SQLite file in `folder`, or a PostgreSQL schema of its own, dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{folder / f'master-{uuid.uuid4().hex[:8]}.db'}"
        return
    require_postgres()
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.schema.CreateSchema(schema))
    url = sa.engine.make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.execute(sa.schema.DropSchema(schema, cascade=True))
            drop_key_store(conn, schema)  # the master's signing key lives in a schema of its own
        admin.dispose()


@pytest.fixture
def master_url(backend: str, tmp_path: Path) -> Iterator[str]:
    with fresh_master_url(backend, tmp_path) as url:
        yield url
