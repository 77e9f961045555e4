"""The review page over HTTP, against real SQLite and PostgreSQL masters: who may do what, CSRF, races,
read-only after the load, typed-value validation and session expiry.

The app runs in uvicorn on a free loopback port and is driven with httpx, like a browser without
JavaScript would drive it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from argon2 import PasswordHasher
from sqlalchemy.engine import Engine

from sync_pipeline.accounts import Account, Accounts
from sync_pipeline.engine.queries import get_conflict
from sync_pipeline.engine.records import latest_decision_id
from sync_pipeline.engine.session import run_sync
from sync_pipeline.review import links
from sync_pipeline.review.app import create_app
from sync_pipeline.review.auth import AuthSettings
from sync_pipeline.review.server import BackgroundServer
from sync_pipeline_tests.helpers import TABLES, make_master, make_replica, replica_engine, row

P, C, T = TABLES["parent"], TABLES["child"], TABLES["tagged"]
PASSWORD = "correct horse battery"

TWO_MODULES = """\
modules:
  core:
    policy: manual
    tables:
      parent: {natural_key: [email]}
      child: {}
  extra:
    policy: manual
    tables:
      tagged: {}
"""


class FakeClock:
    """Time that moves only when a test says so: sessions expire without waiting."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Review:
    engine: Engine
    url: str
    session_id: str
    replica: Path
    conflicts: dict[str, int]  # name -> conflict id
    accounts: Accounts
    clock: FakeClock
    token: str
    clients: list[httpx.Client] = field(default_factory=list)

    def client(self, token: str | None = None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        client = httpx.Client(base_url=self.url, follow_redirects=False, headers=headers, timeout=60)
        self.clients.append(client)
        return client

    def login(self, name: str) -> httpx.Client:
        client = self.client()
        answer = client.post(
            "/login", data={"name": name, "password": PASSWORD, "csrf_token": csrf_of(client.get("/login"))}
        )
        assert answer.status_code == 303, answer.text
        return client

    def decisions(self, name: str) -> int:
        return latest_decision_id(self.engine, self.conflicts[name])


def csrf_of(page: httpx.Response) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


def seen_of(page: httpx.Response) -> str:
    found = re.search(r'name="seen" value="(\d+)"', page.text)
    assert found, page.text
    return found.group(1)


@pytest.fixture(scope="module")
def password_hash() -> str:
    # argon2 is slow on purpose; one hash serves every account of every test.
    return PasswordHasher().hash(PASSWORD)


def make_review_master(master_url: str, folder: Path) -> tuple[Engine, Path, str, dict[str, int]]:
    """A master with two manual modules and a session waiting for four decisions:
    `pair` (parent 1: city and name changed on both sides), `name` (parent 2), `amount` (child 1)
    in module core, and `title` (tagged A/1) in module extra."""
    engine = make_master(master_url, settings=TWO_MODULES)
    replica = make_replica(engine, folder, owner="Alex Field")
    with replica_engine(replica).begin() as r:
        r.execute(sa.update(P).where(P.c.id == 1).values(city="Local city", name="Local one"))
        r.execute(sa.update(P).where(P.c.id == 2).values(name="Local name"))
        r.execute(sa.update(C).where(C.c.id == 1).values(amount=5))
        r.execute(sa.update(T).where(T.c.code == "A").values(title="Local title"))
    with engine.begin() as m:
        m.execute(sa.update(P).where(P.c.id == 1).values(city="Master city", name="Master one"))
        m.execute(sa.update(P).where(P.c.id == 2).values(name="Master name"))
        m.execute(sa.update(C).where(C.c.id == 1).values(amount=7))
        m.execute(sa.update(T).where(T.c.code == "A").values(title="Master title"))
    result = run_sync(engine, replica)
    assert result.status == "waiting" and result.pending == {"core": 3, "extra": 1}
    assert result.session_id is not None
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT conflict_id, table_name, row_key FROM sync_conflict")).all()
    names = {("parent", '{"id": 1}'): "pair", ("parent", '{"id": 2}'): "name", ("child", '{"id": 1}'): "amount"}
    conflicts = {names.get((table, key), "title"): conflict_id for conflict_id, table, key in found}
    return engine, replica, result.session_id, conflicts


@pytest.fixture
def review(master_url: str, tmp_path: Path, password_hash: str) -> Iterator[Review]:
    engine, replica, session_id, conflicts = make_review_master(master_url, tmp_path)
    accounts = Accounts(
        [
            Account(name="Ada Core", modules=["core"], password_hash=password_hash),
            Account(name="Eve Extra", modules=["extra"], password_hash=password_hash),
            Account(name="Root Admin", modules=["*"], password_hash=password_hash),
            Account(name="Core Bot", modules=["core"]),
        ]
    )
    _id, token = accounts.new_token("Core Bot", "2026-01-01T00:00:00")
    clock = FakeClock()
    app = create_app(master_url, accounts, auth=AuthSettings(idle_seconds=600, max_seconds=3600, clock=clock))
    with BackgroundServer(app) as url:
        state = Review(engine, url, session_id, replica, conflicts, accounts, clock, token)
        yield state
        for client in state.clients:
            client.close()
    app.state.engine.dispose()
    engine.dispose()


# ------------------------------------------------------------------------------------------------


def test_anonymous_is_refused(review: Review) -> None:
    anonymous = review.client()
    pair = review.conflicts["pair"]
    for path in ("/", f"/sessions/{review.session_id}", f"/conflicts/{pair}"):
        answer = anonymous.get(path)
        assert answer.status_code == 303 and answer.headers["location"].startswith("/login?next="), path
    posts = [
        (f"/conflicts/{pair}/decide", {"take": "local", "seen": "0"}),
        (f"/sessions/{review.session_id}/modules/core/decide", {"take": "local"}),
    ]
    for path, form in posts:
        assert anonymous.post(path, data=form).status_code == 401, path
    for path in ("/api/sessions", f"/api/conflicts/{pair}", f"/api/sessions/{review.session_id}/conflicts"):
        assert anonymous.get(path).status_code == 401, path
    assert anonymous.post(f"/api/conflicts/{pair}/decide", json={"take": "local"}).status_code == 401
    forged = review.client(token="spt_000000000000_not-a-real-secret")
    assert forged.get("/api/sessions").status_code == 401
    assert forged.post(f"/api/conflicts/{pair}/decide", json={"take": "local"}).status_code == 401
    assert review.decisions("pair") == 0
    # The login page itself is public, and the follow-up goes back where the person wanted to go.
    login = anonymous.get(f"/login?next=/conflicts/{pair}")
    assert login.status_code == 200 and f'value="/conflicts/{pair}"' in login.text


def test_post_without_csrf_token_is_refused(review: Review) -> None:
    ada = review.login("Ada Core")
    pair = review.conflicts["pair"]
    page = ada.get(f"/conflicts/{pair}")
    form = {"take": "local", "seen": seen_of(page)}
    assert ada.post(f"/conflicts/{pair}/decide", data=form).status_code == 403
    assert ada.post(f"/conflicts/{pair}/decide", data={**form, "csrf_token": "forged"}).status_code == 403
    bulk = f"/sessions/{review.session_id}/modules/core/decide"
    assert ada.post(bulk, data={"take": "local"}).status_code == 403
    # A logged-in browser calling the JSON API needs the token in a header too.
    assert ada.post(f"/api/conflicts/{pair}/decide", json={"take": "local"}).status_code == 403
    assert review.decisions("pair") == 0
    # Logging out needs the token as well (a forged link must not log people out).
    assert ada.post("/logout").status_code == 303 and ada.get("/").status_code == 200
    # With the token, the same decision goes through.
    answer = ada.post(f"/conflicts/{pair}/decide", data={**form, "csrf_token": csrf_of(page)})
    assert answer.status_code == 303
    assert get_conflict(review.engine, pair)["decision"]["fields"]["city"] == {"take": "local"}


def test_a_person_cannot_touch_another_modules_conflicts(review: Review) -> None:
    ada = review.login("Ada Core")
    title = review.conflicts["title"]
    page = ada.get(f"/sessions/{review.session_id}")
    token = csrf_of(page)
    assert f'href="/conflicts/{title}"' not in page.text and "not allowed for that module" in page.text
    assert ada.get(f"/conflicts/{title}").status_code == 403
    answer = ada.post(f"/conflicts/{title}/decide", data={"take": "local", "seen": "0", "csrf_token": token})
    assert answer.status_code == 403 and "may not decide conflicts of module &#39;extra&#39;" in answer.text
    answer = ada.post(
        f"/conflicts/{title}/decide",
        data={"take": "value", "field": "title", "value": "x", "seen": "0", "csrf_token": token},
    )
    assert answer.status_code == 403
    bulk = ada.post(f"/sessions/{review.session_id}/modules/extra/decide", data={"take": "local", "csrf_token": token})
    assert bulk.status_code == 403
    bot = review.client(token=review.token)
    assert bot.get(f"/api/conflicts/{title}").status_code == 403
    assert bot.post(f"/api/conflicts/{title}/decide", json={"take": "master"}).status_code == 403
    assert (
        bot.post(f"/api/sessions/{review.session_id}/modules/extra/decide", json={"take": "master"}).status_code == 403
    )
    listed = bot.get(f"/api/sessions/{review.session_id}/conflicts").json()
    assert {c["module"] for c in listed} == {"core"}
    assert review.decisions("title") == 0
    # Eve, who is allowed for `extra`, may decide it.
    eve = review.login("Eve Extra")
    page = eve.get(f"/conflicts/{title}")
    answer = eve.post(
        f"/conflicts/{title}/decide", data={"take": "master", "seen": seen_of(page), "csrf_token": csrf_of(page)}
    )
    assert answer.status_code == 303
    assert get_conflict(review.engine, title)["decision"]["by"] == "Eve Extra"


def test_second_of_two_deciders_sees_already_decided_and_may_change_it(review: Review) -> None:
    ada, root = review.login("Ada Core"), review.login("Root Admin")
    pair = review.conflicts["pair"]
    ada_page, root_page = ada.get(f"/conflicts/{pair}"), root.get(f"/conflicts/{pair}")
    assert seen_of(ada_page) == seen_of(root_page) == "0"
    first = ada.post(f"/conflicts/{pair}/decide", data={"take": "local", "seen": "0", "csrf_token": csrf_of(ada_page)})
    assert first.status_code == 303
    second = root.post(
        f"/conflicts/{pair}/decide", data={"take": "master", "seen": "0", "csrf_token": csrf_of(root_page)}
    )
    assert second.status_code == 409
    assert re.search(r"Already decided by Ada Core at \d{4}-\d\d-\d\d \d\d:\d\d UTC", second.text)
    assert get_conflict(review.engine, pair)["decision"]["fields"]["city"] == {"take": "local"}
    # The refusal page offers the deliberate change, carrying the decision Root has now seen.
    change = re.search(r'id="already-decided".*?<form[^>]*>(.*?)</form>', second.text, re.S)
    assert change is not None and "change it to master" in change.group(1)
    fields = dict(re.findall(r'name="(\w+)" value="([^"]*)"', change.group(1)))
    assert fields["seen"] == str(review.decisions("pair")) and fields["take"] == "master"
    assert root.post(f"/conflicts/{pair}/decide", data=fields).status_code == 303
    decision = get_conflict(review.engine, pair)["decision"]
    assert decision["fields"]["city"] == {"take": "master"} and decision["by"] == "Root Admin"
    assert [(h["by"], h["take"]) for h in decision["history"]] == [("Ada Core", "local"), ("Root Admin", "master")]


def test_simultaneous_decisions_one_wins_the_other_is_told(review: Review) -> None:
    people = [review.login("Ada Core"), review.login("Root Admin")]
    name = review.conflicts["name"]
    tokens = [csrf_of(p.get(f"/conflicts/{name}")) for p in people]
    barrier = threading.Barrier(2)
    statuses: list[int] = []

    def decide(client: httpx.Client, token: str, take: str) -> None:
        barrier.wait()
        answer = client.post(f"/conflicts/{name}/decide", data={"take": take, "seen": "0", "csrf_token": token})
        statuses.append(answer.status_code)

    threads = [
        threading.Thread(target=decide, args=(people[0], tokens[0], "local")),
        threading.Thread(target=decide, args=(people[1], tokens[1], "master")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [303, 409]
    assert len(get_conflict(review.engine, name)["decision"]["history"]) == 1


def test_decisions_are_read_only_after_the_load(review: Review) -> None:
    root = review.login("Root Admin")
    pair = review.conflicts["pair"]
    page = root.get(f"/sessions/{review.session_id}")
    token = csrf_of(page)
    version = re.search(r'name="version" value="(\d+)"', page.text)
    assert version is not None
    for module in ("core", "extra"):
        answer = root.post(
            f"/sessions/{review.session_id}/modules/{module}/decide",
            data={"take": "local", "csrf_token": token, "version": version.group(1)},
        )
        assert answer.status_code == 303, answer.text
        version = re.search(r'name="version" value="(\d+)"', root.get(f"/sessions/{review.session_id}").text)
    decided = root.get(f"/sessions/{review.session_id}")
    assert "All conflicts of this session are decided" in decided.text
    assert links.dagster_session_runs_url(review.session_id).replace("&", "&amp;") in decided.text
    assert run_sync(review.engine, review.replica).status == "done"
    assert row(review.engine, "parent", id=1)["city"] == "Local city"
    before = review.decisions("pair")
    page = root.get(f"/conflicts/{pair}")
    assert "Decisions are read-only" in page.text and "/decide" not in page.text
    answer = root.post(f"/conflicts/{pair}/decide", data={"take": "master", "seen": str(before), "csrf_token": token})
    assert answer.status_code == 409 and "read-only once the load has started" in answer.text
    bulk = root.post(f"/sessions/{review.session_id}/modules/core/decide", data={"take": "master", "csrf_token": token})
    assert bulk.status_code == 409 and "read-only" in bulk.text
    bot = review.client(token=review.token)
    assert bot.post(f"/api/conflicts/{pair}/decide", json={"take": "master", "change": True}).status_code == 409
    assert review.decisions("pair") == before
    finished = root.get(f"/sessions/{review.session_id}")
    assert "Synchronised" in finished.text and 'id="protocol-link"' in finished.text
    protocol = root.get(f"/sessions/{review.session_id}/protocol")
    assert protocol.status_code == 200 and "Alex Field" in protocol.text and "Local city" in protocol.text
    # The protocol shows every module of the replica: a person allowed for only one may not read it.
    ada = review.login("Ada Core")
    assert 'id="protocol-link"' not in ada.get(f"/sessions/{review.session_id}").text
    assert ada.get(f"/sessions/{review.session_id}/protocol").status_code == 403
    assert ada.get(f"/sessions/{review.session_id}/protocol.pdf").status_code == 403


def test_typed_values_are_validated_and_errors_shown_next_to_the_field(review: Review) -> None:
    ada = review.login("Ada Core")
    name, amount = review.conflicts["name"], review.conflicts["amount"]

    def typed(conflict_id: int, field_name: str, value: str, null: bool = False) -> httpx.Response:
        page = ada.get(f"/conflicts/{conflict_id}")
        form = {
            "take": "value",
            "field": field_name,
            "value": value,
            "seen": seen_of(page),
            "csrf_token": csrf_of(page),
        }
        return ada.post(f"/conflicts/{conflict_id}/decide", data={**form, **({"null": "1"} if null else {})})

    too_long = typed(name, "name", "x" * 51)
    assert too_long.status_code == 422
    error = re.search(r'<div class="field-error" id="error-name"[^>]*>([^<]*)</div>', too_long.text)
    assert error is not None and "longer than the column&#39;s 50" in error.group(1)
    assert f'value="{"x" * 51}"' in too_long.text  # the typed text stays in the input
    empty = typed(name, "name", "", null=True)
    assert empty.status_code == 422 and "cannot be empty (NOT NULL)" in empty.text
    not_a_number = typed(amount, "amount", "twelve")
    assert not_a_number.status_code == 422 and 'id="error-amount"' in not_a_number.text
    assert review.decisions("name") == review.decisions("amount") == 0
    assert typed(name, "name", "Ed Itéd").status_code == 303
    assert typed(amount, "amount", "12.5").status_code == 303
    assert get_conflict(review.engine, name)["decision"]["fields"]["name"] == {"take": "value", "value": "Ed Itéd"}
    assert get_conflict(review.engine, amount)["decision"]["fields"]["amount"] == {"take": "value", "value": "12.50"}


def test_login_sessions_expire(review: Review) -> None:
    ada = review.login("Ada Core")
    page = ada.get("/")
    assert page.status_code == 200 and "Ada Core" in page.text
    review.clock.now += 599  # active: each request moves the idle deadline on
    assert ada.get("/").status_code == 200
    review.clock.now += 601
    expired = ada.get(f"/conflicts/{review.conflicts['pair']}")
    assert expired.status_code == 303 and expired.headers["location"].startswith("/login")
    assert "Your session expired" in ada.get(expired.headers["location"]).text
    answer = ada.post(
        f"/conflicts/{review.conflicts['pair']}/decide",
        data={"take": "local", "seen": "0", "csrf_token": csrf_of(page)},
    )
    assert answer.status_code == 401 and review.decisions("pair") == 0
    # However active, a login lasts at most max_seconds.
    ada = review.login("Ada Core")
    for _ in range(7):
        review.clock.now += 500
        assert ada.get("/").status_code == 200
    review.clock.now += 500
    assert ada.get("/").status_code == 303


def test_password_change_ends_open_sessions(review: Review) -> None:
    ada = review.login("Ada Core")
    assert ada.get("/").status_code == 200
    review.accounts.set_password("Ada Core", "a brand new password")
    assert ada.get("/").status_code == 303


def test_login_refuses_wrong_passwords_and_foreign_redirects(review: Review) -> None:
    client = review.client()
    token = csrf_of(client.get("/login"))
    wrong = client.post("/login", data={"name": "Ada Core", "password": "nope", "csrf_token": token})
    assert wrong.status_code == 401 and "Unknown name or wrong password" in wrong.text
    unknown = client.post("/login", data={"name": "Mallory", "password": PASSWORD, "csrf_token": token})
    assert unknown.status_code == 401
    tokens_only = client.post("/login", data={"name": "Core Bot", "password": PASSWORD, "csrf_token": token})
    assert tokens_only.status_code == 401
    no_csrf = client.post("/login", data={"name": "Ada Core", "password": PASSWORD})
    assert no_csrf.status_code == 403
    ok = client.post(
        "/login", data={"name": "Ada Core", "password": PASSWORD, "csrf_token": token, "next": "//evil.example/x"}
    )
    assert ok.status_code == 303 and ok.headers["location"] == "/"


def test_sessions_page_counts_pending_per_module(review: Review) -> None:
    ada = review.login("Ada Core")
    page = ada.get("/")
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert page.headers["x-frame-options"] == "DENY"
    chips = dict(re.findall(r'data-module="(\w+)" data-pending="(\d+)"', page.text))
    assert chips == {"core": "3", "extra": "1"}
    assert "Alex Field" in page.text
    assert 'class="chip mine" data-module="core"' in page.text
    assert 'class="chip other" data-module="extra"' in page.text
    assert ada.get("/sessions/no-such-session").status_code == 404
    assert ada.get("/conflicts/987654").status_code == 404
    assert ada.get("/static/review.css").status_code == 200


def test_bulk_decision_refuses_a_stale_page_and_keeps_decisions_of_others(review: Review) -> None:
    ada, root = review.login("Ada Core"), review.login("Root Admin")
    session_page = ada.get(f"/sessions/{review.session_id}")
    version = re.search(r'name="version" value="(\d+)"', session_page.text)
    assert version is not None
    # Root decides one field of `pair` after Ada loaded the page: Ada's bulk decision is refused.
    pair = review.conflicts["pair"]
    pair_page = root.get(f"/conflicts/{pair}")
    answer = root.post(
        f"/conflicts/{pair}/decide",
        data={"take": "master", "field": "city", "seen": "0", "csrf_token": csrf_of(pair_page)},
    )
    assert answer.status_code == 303 and get_conflict(review.engine, pair)["status"] == "pending"
    bulk = f"/sessions/{review.session_id}/modules/core/decide"
    form = {"take": "local", "csrf_token": csrf_of(session_page), "version": version.group(1)}
    stale = ada.post(bulk, data=form)
    assert stale.status_code == 409 and "changed since you loaded the page" in stale.text
    assert review.decisions("name") == review.decisions("amount") == 0
    # From a fresh page it goes through, and fills only the field Root left open.
    fresh = re.search(r'name="version" value="(\d+)"', ada.get(f"/sessions/{review.session_id}").text)
    assert fresh is not None
    assert ada.post(bulk, data={**form, "version": fresh.group(1)}).status_code == 303
    for name in ("pair", "name", "amount"):
        assert get_conflict(review.engine, review.conflicts[name])["status"] == "decided"
    decision = get_conflict(review.engine, pair)["decision"]
    assert decision["fields"] == {"city": {"take": "master"}, "name": {"take": "local"}}
    assert [(h["by"], h["field"], h["take"]) for h in decision["history"]] == [
        ("Root Admin", "city", "master"),
        ("Ada Core", "name", "local"),
    ]
    assert review.decisions("title") == 0  # the other module is untouched


def test_api_with_a_token_follows_the_same_rules(review: Review) -> None:
    bot = review.client(token=review.token)
    sessions = bot.get("/api/sessions").json()
    assert [s["pending"] for s in sessions] == [{"core": 3, "extra": 1}]
    pair = review.conflicts["pair"]
    shown = bot.get(f"/api/conflicts/{pair}").json()
    assert shown["latest_decision_id"] == 0 and {f["name"] for f in shown["fields"]} == {"city", "name"}
    # No CSRF token needed with a bearer token; the decision records the token's account.
    decided = bot.post(f"/api/conflicts/{pair}/decide", json={"take": "local", "field": "city"})
    assert decided.status_code == 200 and decided.json()["decision"]["by"] == "Core Bot"
    assert decided.json()["status"] == "pending"  # the name field is still open
    stale_seen = bot.get(f"/api/conflicts/{pair}").json()["latest_decision_id"]
    ada = review.login("Ada Core")
    page = ada.get(f"/conflicts/{pair}")
    ada.post(f"/conflicts/{pair}/decide", data={"take": "master", "seen": seen_of(page), "csrf_token": csrf_of(page)})
    late = bot.post(f"/api/conflicts/{pair}/decide", json={"take": "local", "field": "name", "seen": stale_seen})
    assert late.status_code == 409 and late.json()["by"] == "Ada Core"
    refused = bot.post(f"/api/conflicts/{pair}/decide", json={"take": "local"})
    assert refused.status_code == 409 and refused.json()["by"] == "Ada Core"
    assert "already decided by Ada Core" in refused.json()["error"]
    changed = bot.post(f"/api/conflicts/{pair}/decide", json={"take": "local", "change": True})
    assert changed.status_code == 200 and changed.json()["decision"]["row"] == "local"
    invalid = bot.post(
        f"/api/conflicts/{review.conflicts['name']}/decide", json={"take": "value", "field": "name", "value": None}
    )
    assert invalid.status_code == 422 and "NOT NULL" in invalid.json()["error"]


def test_session_tag_matches_the_dagster_layer() -> None:
    sensors = pytest.importorskip("sync_pipeline.defs.sensors")
    assert links.SESSION_TAG == sensors.SESSION_TAG


def test_history_page_shows_the_conflicts_of_ones_own_modules(review: Review) -> None:
    assert review.client().get("/history").status_code in (303, 401)  # anonymous: to the login
    ada, eve = review.login("Ada Core"), review.login("Eve Extra")
    page = ada.get("/history")
    assert page.status_code == 200
    assert set(re.findall(r'data-conflict="(\d+)"', page.text)) == {
        str(review.conflicts[name]) for name in ("pair", "name", "amount")
    }
    assert "Local one" in page.text and "Master one" in page.text and "pending" in page.text
    assert "Local title" not in page.text  # module extra is not Ada's
    assert set(re.findall(r'data-conflict="(\d+)"', eve.get("/history?days=30").text)) == {
        str(review.conflicts["title"])
    }
