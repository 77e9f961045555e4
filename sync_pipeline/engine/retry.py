"""Retry of a transaction the database aborted because of other transactions, not because of its data.

Two loads into one PostgreSQL master may lock the same rows or parents in different orders; the server
then aborts one of them with a deadlock (SQLSTATE 40P01), or, under a stricter isolation level, with a
serialization failure (40001); MariaDB/MySQL with a deadlock (error 1213) or a lock-wait timeout (1205),
numbers its driver reports instead of SQLSTATEs (`DialectImpl.transient_error`). Nothing of the aborted
transaction was written, so running it again is safe and nearly always succeeds: these are retried with
a bounded, jittered exponential back-off and counted, and never reported as a failed sync. Every other
error propagates at once.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from typing import TypeVar

import sqlalchemy as sa

from sync_pipeline.engine.dialects import driver_transient_kind

T = TypeVar("T")

# SQLSTATE -> the name it is counted under (in the load summary and the Dagster run's metadata).
TRANSIENT_SQLSTATES = {"40P01": "deadlock", "40001": "serialization_failure"}
MAX_ATTEMPTS = 8
FIRST_DELAY_SECONDS = 0.05
MAX_DELAY_SECONDS = 2.0


class TransientRetries:
    """How many times each kind of transient abort was retried (kept across the caller's attempts)."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def transient_kind(exc: BaseException) -> str | None:
    """'deadlock' or 'serialization_failure' for an error the database raised to break a conflict between
    transactions; None for any other error."""
    if not isinstance(exc, sa.exc.DBAPIError):
        return None
    orig = exc.orig
    sqlstate = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    if sqlstate:
        return TRANSIENT_SQLSTATES.get(str(sqlstate))
    return driver_transient_kind(orig)  # drivers without SQLSTATE (mysqlclient: error numbers)


def retry_transient(
    attempt: Callable[[], T],
    retries: TransientRetries,
    max_attempts: int = MAX_ATTEMPTS,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `attempt` (one whole transaction) until it does not end in a transient abort; after
    `max_attempts` aborts the last one propagates. Back-off: 50 ms doubling to 2 s, with full jitter so
    that the two transactions of a deadlock do not meet again at the same instant."""
    for number in range(1, max_attempts + 1):
        try:
            return attempt()
        except sa.exc.DBAPIError as exc:
            kind = transient_kind(exc)
            if kind is None or number == max_attempts:
                raise
            retries.counts[kind] += 1
            sleep(random.uniform(0, min(MAX_DELAY_SECONDS, FIRST_DELAY_SECONDS * 2 ** (number - 1))))
    raise AssertionError("unreachable: the loop returns or raises")
