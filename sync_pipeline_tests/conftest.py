"""Real databases for every test: SQLite always, PostgreSQL and MariaDB from the running servers.

Each PostgreSQL test gets a schema of its own (the URL sets search_path), each MariaDB test a database
of its own; both are dropped afterwards. When no server answers, its tests are skipped locally but fail
in CI (CI=true).
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
# MariaDB's "schema" is a database: the tests' databases are made next to `test` with this server login.
MARIADB_URL = os.environ.get("SYNC_TEST_MARIADB_URL", "mysql+mysqldb://root@127.0.0.1:3306/test?charset=utf8mb4")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

_reachable_servers: dict[str, bool] = {}

# Every master database. `backend` runs a test on SQLite and PostgreSQL; a module whose tests pass on
# MariaDB too imports `masters.backend_on_all_masters` (a `backend` fixture of its own over all three; it
# cannot live here, where it would replace `backend` for every module).
MASTERS = ["sqlite", "postgresql", "mariadb"]

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


def _reachable(url: str) -> bool:
    """Whether a server answers at `url`, asked once per run."""
    if url not in _reachable_servers:
        try:
            engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
            with engine.connect():
                pass
            engine.dispose()
            _reachable_servers[url] = True
        except Exception:
            _reachable_servers[url] = False
    return _reachable_servers[url]


def _require(name: str, url: str) -> None:
    """Skip locally, fail in CI, when the server at `url` does not answer."""
    if _reachable(url):
        return
    message = f"{name} is not reachable at {url}"
    if IN_CI:
        pytest.fail(message + f" (CI must have it: {name} tests never skip in CI)")
    pytest.skip(message)


def require_postgres() -> None:
    _require("PostgreSQL", PG_URL)


def require_mariadb() -> None:
    _require("MariaDB", MARIADB_URL)


@contextmanager
def fresh_mariadb_url(prefix: str = "t") -> Iterator[str]:
    """An empty MariaDB master: a database of its own (utf8mb4), dropped afterwards."""
    require_mariadb()
    database = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(MARIADB_URL)
    preparer = admin.dialect.identifier_preparer
    with admin.begin() as conn:  # a generated name, quoted by the dialect: no input reaches this text
        conn.exec_driver_sql(f"CREATE DATABASE {preparer.quote(database)} CHARACTER SET utf8mb4")
    url = sa.engine.make_url(MARIADB_URL).set(database=database)
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {preparer.quote(database)}")
        admin.dispose()


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
    """An empty master: a SQLite file in `folder`, or a PostgreSQL schema / MariaDB database of its own,
    dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{folder / f'master-{uuid.uuid4().hex[:8]}.db'}"
        return
    if backend == "mariadb":
        with fresh_mariadb_url(prefix) as url:
            yield url
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
