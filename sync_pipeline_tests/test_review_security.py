"""The review page under attack, through the real ASGI app and real SQLite and PostgreSQL masters:
login throttling, a cap on password checks, request body limits, login sessions kept in the master
(logout, password change and removal end them; they survive a restart), and a master file replaced
while the page runs.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlalchemy.engine import Engine
from starlette.applications import Starlette
from starlette.testclient import TestClient

from sync_pipeline.accounts import Account, Accounts
from sync_pipeline.cli_accounts import accounts_group
from sync_pipeline.review.app import COOKIE_NAME, create_app
from sync_pipeline.review.auth import AuthSettings
from sync_pipeline.review.login_guard import ThrottlePolicy, VerificationGate
from sync_pipeline.review.server import BackgroundServer
from sync_pipeline_tests.test_review_http import (
    PASSWORD,
    FakeClock,
    csrf_of,
    make_review_master,
    password_hash,  # noqa: F401 - the module-scoped fixture
)

POLICY = ThrottlePolicy(account_free_failures=3, client_free_failures=6, first_delay_seconds=30, max_delay_seconds=600)
BODY_LIMIT = 64 * 1024


@dataclass
class Page:
    app: Starlette
    engine: Engine
    master_url: str
    session_id: str
    conflicts: dict[str, int]
    clock: FakeClock
    accounts_path: Path
    gate: VerificationGate

    def client(self, address: str = "10.0.0.1") -> TestClient:
        return TestClient(self.app, base_url="http://review.test", client=(address, 40000), follow_redirects=False)

    def login(self, client: TestClient, name: str = "Ada Core", password: str = PASSWORD) -> httpx.Response:
        token = csrf_of(client.get("/login"))
        return client.post("/login", data={"name": name, "password": password, "csrf_token": token})

    def logins_in_master(self, account: str | None = None) -> list[Any]:
        with self.engine.connect() as conn:
            query = sa.text("SELECT id_hash, account FROM sync_web_session")
            rows = conn.execute(query).all()
        return [r for r in rows if account is None or r.account == account]

    def decisions(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM sync_decision WHERE rule = 'person'")).scalar_one())


def write_accounts(path: Path, hashed: str) -> Path:
    accounts = Accounts(
        [
            Account(name="Ada Core", modules=["core"], password_hash=hashed),
            Account(name="Eve Extra", modules=["extra"], password_hash=hashed),
            Account(name="Core Bot", modules=["core"]),
        ]
    )
    return accounts.save(path)


def page_app(master_url: str, accounts_path: Path, clock: FakeClock, gate: VerificationGate | None = None) -> Starlette:
    return create_app(
        master_url,
        accounts_path,
        auth=AuthSettings(idle_seconds=600, max_seconds=3600, clock=clock),
        throttle=POLICY,
        gate=gate,
        max_body_bytes=BODY_LIMIT,
    )


@pytest.fixture
def page(master_url: str, tmp_path: Path, password_hash: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Page]:  # noqa: F811
    monkeypatch.delenv("SYNC_REVIEW_SECRET", raising=False)
    engine, _replica, session_id, conflicts = make_review_master(master_url, tmp_path)
    accounts_path = write_accounts(tmp_path / "home" / "accounts.yaml", password_hash)
    clock = FakeClock()
    gate = VerificationGate(slots=2, wait_seconds=30)
    app = page_app(master_url, accounts_path, clock, gate)
    yield Page(app, engine, master_url, session_id, conflicts, clock, accounts_path, gate)
    app.state.master.dispose()
    engine.dispose()


def cookie_payload(client: TestClient) -> dict[str, Any]:
    """What Starlette's signed cookie holds: base64 JSON before the signature."""
    value = client.cookies[COOKIE_NAME]
    data = value.split(".")[0]
    return json.loads(base64.b64decode(data + "=" * (-len(data) % 4)))


# -- 11.10: login throttling ------------------------------------------------------------------------


def test_failed_logins_lock_the_account_with_a_growing_delay(page: Page, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="sync_pipeline.review")
    # From a new address each time: only the account's count can stop these.
    for attempt in range(2):
        assert page.login(page.client(f"10.1.0.{attempt}"), password="wrong password").status_code == 401
    third = page.login(page.client("10.1.0.9"), password="wrong password")
    assert third.status_code == 429 and third.headers["retry-after"] == "30"
    assert "Too many failed logins for this account" in third.text
    # The right password is refused too while the lockout lasts, and no login session starts.
    right = page.login(page.client("10.2.0.1"))
    assert right.status_code == 429 and "the right password is refused too" in right.text
    assert page.logins_in_master() == []
    assert any("too many failed logins for the account" in r.getMessage() for r in caplog.records)
    # Another account is not affected.
    assert page.login(page.client("10.2.0.2"), name="Eve Extra").status_code == 303
    # Once the lockout is over, a further failure locks for twice as long.
    page.clock.now += 31
    again = page.login(page.client("10.1.0.10"), password="wrong password")
    assert again.status_code == 429 and again.headers["retry-after"] == "60"
    page.clock.now += 61
    # A successful login resets the account's count: two failures are free again.
    assert page.login(page.client("10.2.0.3")).status_code == 303
    assert [r.account for r in page.logins_in_master("Ada Core")] == ["Ada Core"]
    for attempt in range(2):
        assert page.login(page.client(f"10.3.0.{attempt}"), password="wrong password").status_code == 401


def test_failed_logins_lock_the_client_address(page: Page) -> None:
    sprayer = "10.9.9.9"
    for attempt in range(5):  # one guess per name: no account's own count gets near its limit
        answer = page.login(page.client(sprayer), name=f"Guess {attempt}", password="wrong password")
        assert answer.status_code == 401
    sixth = page.login(page.client(sprayer), name="Eve Extra", password="wrong password")
    assert sixth.status_code == 429 and "for this address" in sixth.text
    # From that address even a right password is refused; from another one it works.
    assert page.login(page.client(sprayer)).status_code == 429
    assert page.logins_in_master() == []
    assert page.login(page.client("10.0.0.2")).status_code == 303


# -- 11.11: password checks and request bodies are bounded ------------------------------------------


def test_a_login_finding_every_password_check_slot_taken_is_refused(page: Page, master_url: str) -> None:
    gate = VerificationGate(slots=1, wait_seconds=0)
    app = page_app(master_url, page.accounts_path, page.clock, gate)
    try:
        client = TestClient(app, base_url="http://review.test", follow_redirects=False)
        assert gate.try_enter()  # another login's argon2 check is running
        busy = page.login(client)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
        assert "Too many logins at once" in busy.text
        assert page.logins_in_master() == []
        gate.leave()
        assert page.login(client).status_code == 303
        assert len(page.logins_in_master("Ada Core")) == 1
    finally:
        app.state.master.dispose()


def test_concurrent_logins_never_run_more_password_checks_than_the_slots(page: Page) -> None:
    answers: list[int] = []
    names = ["Ada Core", "Eve Extra"] * 4

    def log_in(name: str) -> None:
        with httpx.Client(base_url=url, follow_redirects=False, timeout=120) as client:
            token = csrf_of(client.get("/login"))
            answer = client.post("/login", data={"name": name, "password": PASSWORD, "csrf_token": token})
            answers.append(answer.status_code)

    throttle = page.app.state.review.throttle
    throttle.policy = ThrottlePolicy(account_free_failures=100, client_free_failures=100)
    with BackgroundServer(page.app) as url:
        threads = [threading.Thread(target=log_in, args=(name,)) for name in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert sorted(answers) == [303] * len(names)
    assert 1 <= page.gate.peak <= page.gate.slots and page.gate.in_use == 0
    assert len(page.logins_in_master()) == len(names)


def test_a_declared_oversized_body_is_refused_before_a_byte_is_read(page: Page) -> None:
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/login",
        "raw_path": b"/login",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"review.test"), (b"content-length", b"900000000")],
        "client": ("10.0.0.1", 40000),
        "server": ("review.test", 80),
    }
    read: list[str] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        read.append("body")
        raise AssertionError("the body was read")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(page.app(scope, receive, send))
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 413
    assert read == []


def test_oversized_bodies_are_refused_on_every_route_before_the_csrf_check(page: Page) -> None:
    ada = page.client()
    assert page.login(ada).status_code == 303
    big = b"x" * (BODY_LIMIT + 1)
    pair = page.conflicts["pair"]
    declared = [
        ("/login", {"content-type": "application/x-www-form-urlencoded"}),
        (f"/conflicts/{pair}/decide", {"content-type": "application/x-www-form-urlencoded"}),
        (f"/api/conflicts/{pair}/decide", {"content-type": "application/json"}),
        ("/logout", {"content-type": "application/x-www-form-urlencoded"}),
    ]
    for path, headers in declared:
        answer = ada.post(path, content=big, headers=headers)
        assert answer.status_code == 413, path
        assert "larger than" in answer.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for _ in range(BODY_LIMIT // 1024 + 2):
            yield b"name=" + b"y" * 1019

    streamed = ada.post("/login", content=chunks(), headers={"content-type": "application/x-www-form-urlencoded"})
    assert "content-length" not in streamed.request.headers
    assert streamed.status_code == 413
    assert page.decisions() == 0
    # The login survived: nothing of the refused requests reached a route.
    assert ada.get("/").status_code == 200


# -- 11.12: login sessions live in the master -------------------------------------------------------


def test_a_copied_cookie_is_refused_after_logout(page: Page) -> None:
    ada = page.client()
    assert page.login(ada).status_code == 303
    page_html = ada.get(f"/conflicts/{page.conflicts['pair']}")
    token = csrf_of(page_html)
    thief = page.client("10.6.6.6")
    thief.cookies.set(COOKIE_NAME, ada.cookies[COOKIE_NAME])
    assert thief.get("/").status_code == 200  # the copy works while the login lasts
    assert ada.post("/logout", data={"csrf_token": token}).status_code == 303
    assert page.logins_in_master() == []
    assert thief.get("/").status_code == 303
    assert thief.get(f"/api/conflicts/{page.conflicts['pair']}").status_code == 401
    decide = thief.post(
        f"/conflicts/{page.conflicts['pair']}/decide", data={"take": "local", "seen": "0", "csrf_token": token}
    )
    assert decide.status_code == 401 and page.decisions() == 0


def test_the_cookie_carries_only_a_random_id_and_the_master_only_its_hash(page: Page) -> None:
    ada = page.client()
    assert page.login(ada).status_code == 303
    payload = cookie_payload(ada)
    assert set(payload) <= {"sid", "csrf", "flash"} and "Ada" not in json.dumps(payload)
    assert len(payload["sid"]) >= 40
    [row] = page.logins_in_master()
    assert row.account == "Ada Core" and row.id_hash == hashlib.sha256(payload["sid"].encode()).hexdigest()
    assert payload["sid"] not in json.dumps([tuple(r) for r in page.logins_in_master()])
    # Logging in again from the same browser ends the login the cookie held.
    assert page.login(ada).status_code == 303
    [again] = page.logins_in_master()
    assert again.id_hash != row.id_hash


def test_expiry_is_enforced_in_the_master(page: Page) -> None:
    ada = page.client()
    assert page.login(ada).status_code == 303
    page.clock.now += 601
    assert ada.get("/").status_code == 303
    assert page.logins_in_master() == []


@pytest.mark.parametrize("command", ["password", "remove"])
def test_password_change_and_removal_from_the_cli_end_the_accounts_logins(page: Page, command: str) -> None:
    ada, eve = page.client(), page.client("10.0.0.7")
    assert page.login(ada).status_code == 303 and page.login(eve, name="Eve Extra").status_code == 303
    args = ["--accounts", str(page.accounts_path), "--master", page.master_url, "--name", "ada core"]
    if command == "password":
        args.append("--password-stdin")
    result = CliRunner().invoke(accounts_group, [command, *args], input="another long password\n")
    assert result.exit_code == 0, result.output
    assert "1 page login(s) of Ada Core ended" in result.output
    assert [r.account for r in page.logins_in_master()] == ["Eve Extra"]
    assert ada.get("/").status_code == 303 and eve.get("/").status_code == 200


# -- 17.7: the page follows the master and keeps logins across restarts -----------------------------


def test_logins_survive_a_restart_of_the_page(page: Page) -> None:
    ada = page.client()
    assert page.login(ada).status_code == 303
    cookie = ada.cookies[COOKIE_NAME]
    page.app.state.master.dispose()
    restarted = page_app(page.master_url, page.accounts_path, page.clock)
    try:
        again = TestClient(restarted, base_url="http://review.test", follow_redirects=False)
        again.cookies.set(COOKIE_NAME, cookie)
        answer = again.get("/")
        assert answer.status_code == 200 and "Ada Core" in answer.text
    finally:
        restarted.state.master.dispose()


def test_a_master_without_the_login_table_gets_it_at_the_first_login(page: Page) -> None:
    with page.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE sync_web_session"))
    ada = page.client()
    assert ada.get("/login").status_code == 200
    assert page.login(ada).status_code == 303 and ada.get("/").status_code == 200
    assert len(page.logins_in_master("Ada Core")) == 1


def test_the_page_follows_a_replaced_master_file(tmp_path: Path, password_hash: str) -> None:  # noqa: F811
    master_file = tmp_path / "master.db"
    url = f"sqlite:///{master_file}"
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    engine, _replica, first_session, _conflicts = make_review_master(url, tmp_path / "first")
    engine.dispose()
    clock = FakeClock()
    app = page_app(url, write_accounts(tmp_path / "accounts.yaml", password_hash), clock)
    try:
        client = TestClient(app, base_url="http://review.test", follow_redirects=False)
        token = csrf_of(client.get("/login"))
        client.post("/login", data={"name": "Ada Core", "password": PASSWORD, "csrf_token": token})
        assert first_session in client.get("/").text
        # `sync-pipeline demo` removes the file and builds a new master under the same name.
        master_file.unlink()
        engine, _replica, second_session, _conflicts = make_review_master(url, tmp_path / "second")
        engine.dispose()
        # The login lived in the removed master: the person logs in to the new one.
        assert client.get("/").status_code == 303
        token = csrf_of(client.get("/login"))
        assert (
            client.post("/login", data={"name": "Ada Core", "password": PASSWORD, "csrf_token": token}).status_code
            == 303
        )
        sessions = client.get("/")
        assert second_session in sessions.text and first_session not in sessions.text
        assert client.get(f"/sessions/{first_session}").status_code == 404
    finally:
        app.state.master.dispose()
