"""What stands before a password check: a throttle on failed logins and a cap on argon2 checks.

**Throttle.** Failed logins are counted per account and per client address. The first few within a
window are free; after that each further failure locks the key for a delay that doubles, up to a
cap. While a key is locked every login for it is refused with 429 and `Retry-After`, the right
password too (it is not even checked), so guessing costs the attacker time, not the server
argon2 work. A successful login resets the account's count, not the address's: one's own account
must not clear an address that sprays guesses at others. The counts live in memory (a restart
clears them) and hold at most `max_keys` keys, so a flood of invented names costs bounded memory.

**Gate.** One argon2 check takes 64 MiB for tens of milliseconds. At most `slots` run at once;
a login that finds them all taken waits up to `wait_seconds` and is then refused with 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

MAX_NAME_CHARS = 200  # Account.name's limit


@dataclass
class ThrottlePolicy:
    account_free_failures: int = 5
    # Higher than per account: people behind one NAT or proxy share an address.
    client_free_failures: int = 20
    window_seconds: float = 15 * 60
    first_delay_seconds: float = 30
    max_delay_seconds: float = 15 * 60
    max_keys: int = 10_000


@dataclass
class _Count:
    failures: int
    first_at: float
    locked_until: float = 0.0


@dataclass(frozen=True)
class Lockout:
    what: str  # "account" or "address"
    retry_after: int  # whole seconds

    def message(self) -> str:
        minutes = math.ceil(self.retry_after / 60)
        when = f"{self.retry_after} seconds" if self.retry_after < 120 else f"{minutes} minutes"
        return (
            f"Too many failed logins for this {self.what}. Logins are refused for {when}; "
            "try again then (the right password is refused too until then)."
        )


@dataclass
class LoginThrottle:
    clock: Callable[[], float]
    policy: ThrottlePolicy = field(default_factory=ThrottlePolicy)
    _counts: dict[tuple[str, str], _Count] = field(default_factory=dict)

    @staticmethod
    def _keys(name: str, client: str) -> list[tuple[str, str]]:
        # Cut to the longest account name: invented names of a megabyte must not each be kept whole.
        return [("account", name.strip().casefold()[:MAX_NAME_CHARS]), ("address", client[:MAX_NAME_CHARS])]

    def _free(self, what: str) -> int:
        return self.policy.account_free_failures if what == "account" else self.policy.client_free_failures

    def locked(self, name: str, client: str) -> Lockout | None:
        """The lockout in force for this login, if any (the longer of the account's and the address's)."""
        now = self.clock()
        found: Lockout | None = None
        for key in self._keys(name, client):
            count = self._counts.get(key)
            if count is not None and count.locked_until > now:
                wait = math.ceil(count.locked_until - now)
                if found is None or wait > found.retry_after:
                    found = Lockout(key[0], wait)
        return found

    def attempt(self, name: str, client: str) -> Lockout | None:
        """Before a password check: the lockout that refuses it, else None and the try is counted.

        Counting before the check (and taking it back on success) means that forty logins sent at
        once meet the lockout after the first few, not after all forty were checked.
        """
        found = self.locked(name, client)
        if found is not None:
            return found
        now = self.clock()
        for key in self._keys(name, client):
            count = self._counts.get(key)
            if count is None or (now - count.first_at > self.policy.window_seconds and count.locked_until <= now):
                self._counts.pop(key, None)
                count = self._counts[key] = _Count(0, now)
            count.failures += 1
            over = count.failures - self._free(key[0])
            if over >= 0:
                delay = min(self.policy.max_delay_seconds, self.policy.first_delay_seconds * 2 ** min(over, 32))
                count.locked_until = now + delay
        self._forget_old(now)
        return None

    def succeeded(self, name: str, client: str) -> None:
        """The password was right: the account starts afresh; the address gets this try back."""
        account_key, address_key = self._keys(name, client)
        self._counts.pop(account_key, None)
        count = self._counts.get(address_key)
        if count is not None:
            count.failures -= 1
            if count.failures < self._free("address"):
                count.locked_until = 0.0

    def _forget_old(self, now: float) -> None:
        if len(self._counts) <= self.policy.max_keys:
            return
        for key in [k for k, c in self._counts.items() if c.locked_until <= now]:
            if now - self._counts[key].first_at > self.policy.window_seconds:
                del self._counts[key]
        while len(self._counts) > self.policy.max_keys:  # oldest first (dicts keep insertion order)
            del self._counts[next(iter(self._counts))]


class GateBusy(Exception):
    """Every verification slot stayed taken for the whole wait."""


class VerificationGate:
    """At most `slots` password checks at once, across threads and event loops."""

    POLL_SECONDS = 0.02

    def __init__(self, slots: int = 2, wait_seconds: float = 5.0) -> None:
        self.slots = slots
        self.wait_seconds = wait_seconds
        self.in_use = 0
        self.peak = 0
        self._lock = threading.Lock()

    def try_enter(self) -> bool:
        with self._lock:
            if self.in_use >= self.slots:
                return False
            self.in_use += 1
            self.peak = max(self.peak, self.in_use)
            return True

    def leave(self) -> None:
        with self._lock:
            self.in_use -= 1

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """Hold a slot for the block; raises GateBusy when none frees up within `wait_seconds`."""
        deadline = time.monotonic() + self.wait_seconds
        while not self.try_enter():
            if time.monotonic() >= deadline:
                raise GateBusy()
            await asyncio.sleep(self.POLL_SECONDS)
        try:
            yield
        finally:
            self.leave()
