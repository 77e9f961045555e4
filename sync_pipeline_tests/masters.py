"""`backend` over all three master databases, for the modules whose tests pass on MariaDB too.

A module opts in by importing `backend_on_all_masters`: pytest then finds a `backend` fixture in the
module itself, which wins over conftest's (SQLite and PostgreSQL). Defined here, not in conftest.py,
where a second `backend` would replace the first for every module.
"""

from __future__ import annotations

import pytest

from sync_pipeline_tests.conftest import MASTERS


@pytest.fixture(params=MASTERS, name="backend")
def backend_on_all_masters(request: pytest.FixtureRequest) -> str:
    return request.param
