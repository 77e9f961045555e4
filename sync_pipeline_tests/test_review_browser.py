"""The review page in a real browser: Playwright drives Debian's Chromium (headless) against the page
served by uvicorn on a free loopback port, on the demo's master.

A person logs in, sees the pending counts per module, decides a conflict field by field, types an
invalid value and sees the error, decides the rest of the module in bulk; then one tick of Dagster's
approval sensor launches the load, and the page shows the finished session with its run and protocol.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from argon2 import PasswordHasher
from playwright.sync_api import Browser, Page, sync_playwright

from sync_pipeline.accounts import Account, Accounts
from sync_pipeline.demo import make_demo_edits, prepare_demo
from sync_pipeline.engine.master import connect_master
from sync_pipeline.engine.queries import get_conflict, session_conflicts, session_summary
from sync_pipeline.engine.session import run_sync
from sync_pipeline.review.app import create_app
from sync_pipeline.review.server import BackgroundServer

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PERSON, PASSWORD = "Ada Lovelace", "demo password"
DAGSTER_UI = "http://dagster.example:3000"


@dataclass
class Demo:
    master_url: str
    session_id: str
    url: str
    conflicts: dict[str, int]  # kind -> conflict id


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def password_hash() -> str:
    return PasswordHasher().hash(PASSWORD)


@pytest.fixture
def demo(tmp_path: Path, password_hash: str) -> Iterator[Demo]:
    paths = prepare_demo(tmp_path / "home", "Alex Field")
    engine = connect_master(paths.master_url)
    make_demo_edits(engine, paths.replica)
    result = run_sync(engine, paths.replica)
    assert result.status == "waiting" and result.pending == {"crm": 5} and result.session_id
    conflicts = {c["kind"]: c["id"] for c in session_conflicts(engine, result.session_id)}
    # Allowed for both modules of the replica, so that the protocol (which shows both) is readable.
    accounts = Accounts([Account(name=PERSON, modules=["crm", "sales"], password_hash=password_hash)])
    app = create_app(paths.master_url, accounts, dagster_ui_url=DAGSTER_UI)
    with BackgroundServer(app) as url:
        yield Demo(paths.master_url, result.session_id, url, conflicts)
    app.state.engine.dispose()
    engine.dispose()


@pytest.fixture
def page(browser: Browser, demo: Demo) -> Iterator[Page]:
    context = browser.new_context(base_url=demo.url)
    opened = context.new_page()
    opened.on("dialog", lambda dialog: dialog.accept())  # the bulk decision's confirmation
    yield opened
    context.close()


def log_in(page: Page, demo: Demo) -> None:
    page.goto("/")
    page.wait_for_url(re.compile(r"/login"))
    page.fill("#name", PERSON)
    page.fill("#password", PASSWORD)
    page.click("button:has-text('Log in')")
    page.wait_for_selector("#waiting")


def test_log_in_and_see_pending_counts_per_module(page: Page, demo: Demo) -> None:
    page.goto("/")
    assert "/login" in page.url
    page.fill("#name", PERSON)
    page.fill("#password", "wrong password")
    page.click("button:has-text('Log in')")
    assert "Unknown name or wrong password" in page.inner_text(".notice.error")
    log_in(page, demo)
    row = page.locator(f"tr[data-session='{demo.session_id}']")
    assert row.locator("td").first.inner_text() == "Alex Field"
    chip = row.locator(".chip[data-module='crm']")
    assert chip.get_attribute("data-pending") == "5" and chip.inner_text().split() == ["crm", "5"]
    row.locator("a:has-text('Review')").click()
    page.wait_for_selector("#conflicts")
    crm = page.locator("section.module[data-module='crm']")
    assert crm.locator(".badge").inner_text() == "5 pending"
    sales = page.locator("section.module[data-module='sales']")
    assert "settled by policy" in sales.inner_text()
    assert page.locator("#conflicts tbody tr").count() == 5


def test_decide_a_conflict_field_by_field(page: Page, demo: Demo) -> None:
    log_in(page, demo)
    conflict_id = demo.conflicts["update_update"]
    page.goto(f"/conflicts/{conflict_id}")
    phone = page.locator("#field-phone")
    assert phone.locator("td.local").inner_text().startswith("+49 170 1111111")
    assert phone.locator("td.master").inner_text().startswith("+49 30 9999999")
    assert "changed" in (phone.locator("td.local").get_attribute("class") or "")
    page.click("[data-testid='take-local-phone']")
    page.wait_for_selector(".flash")
    assert "field phone → local" in page.inner_text(".flash")
    assert page.inner_text("#field-phone td.decision .current").strip() == "✓ local"
    assert page.inner_text("#conflict-status") == "pending"
    page.click("[data-testid='take-master-updated_at']")
    # The conflict is decided: the page moves on to the next pending conflict.
    page.wait_for_url(re.compile(rf"/conflicts/(?!{conflict_id}$)\d+$"))
    engine = connect_master(demo.master_url)
    decided = get_conflict(engine, conflict_id)
    engine.dispose()
    assert decided["status"] == "decided"
    assert decided["decision"]["fields"] == {"phone": {"take": "local"}, "updated_at": {"take": "master"}}
    assert [(h["field"], h["by"]) for h in decided["decision"]["history"]] == [
        ("phone", PERSON),
        ("updated_at", PERSON),
    ]


def test_an_invalid_typed_value_shows_the_error_next_to_the_field(page: Page, demo: Demo) -> None:
    log_in(page, demo)
    conflict_id = demo.conflicts["update_update"]
    page.goto(f"/conflicts/{conflict_id}")
    form = page.locator("#field-phone form.typed")
    form.locator("input[name=value]").fill("+49 " + "1" * 40)
    form.locator("button:has-text('Use value')").click()
    error = page.locator("#error-phone")
    error.wait_for()
    assert "longer than the column's 40" in error.inner_text()
    assert page.locator("#field-phone input[name=value]").input_value() == "+49 " + "1" * 40
    assert page.locator("#error-updated_at").count() == 0
    engine = connect_master(demo.master_url)
    assert get_conflict(engine, conflict_id)["decision"] is None
    # A value that fits is stored as typed.
    page.locator("#field-phone input[name=value]").fill("+49 30 5550000")
    page.locator("#field-phone button:has-text('Use value')").click()
    page.wait_for_selector(".flash")
    assert get_conflict(engine, conflict_id)["decision"]["fields"]["phone"] == {
        "take": "value",
        "value": "+49 30 5550000",
    }
    engine.dispose()


def test_bulk_decision_then_the_approval_sensor_launches_the_load(page: Page, demo: Demo) -> None:
    dg = pytest.importorskip("dagster")
    sensors = pytest.importorskip("sync_pipeline.defs.sensors")
    from sync_pipeline.definitions import build_definitions
    from sync_pipeline.defs.resources import MasterDatabase

    log_in(page, demo)
    page.goto(f"/sessions/{demo.session_id}")
    page.locator("section.module[data-module='crm'] button:has-text('Take local')").click()
    page.wait_for_selector("#load-state")
    assert "Took local for 5 pending conflict(s) of crm" in page.inner_text(".flash")
    state = page.inner_text("#load-state")
    assert "All conflicts of this session are decided" in state and "approval sensor launches" in state
    runs_link = page.get_attribute("#load-state a", "href")
    assert runs_link is not None and runs_link.startswith(f"{DAGSTER_UI}/runs?") and demo.session_id in runs_link
    assert page.locator("section.module[data-module='crm'] .badge").inner_text() == "all decided"

    # One tick of the approval sensor, and what the daemon does with its run request.
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"master": MasterDatabase(url=demo.master_url)})
        tick = sensors.approval_sensor(context)
        [request] = tick.run_requests
        assert request.tags[sensors.SESSION_TAG] == demo.session_id
        for partitions in tick.dynamic_partitions_requests:
            instance.add_dynamic_partitions(partitions.partitions_def_name, list(partitions.partition_keys))
        run = (
            build_definitions(demo.master_url)
            .resolve_job_def(sensors.sync_apply_job.name)
            .execute_in_process(
                instance=instance,
                partition_key=request.partition_key,
                tags={**request.tags, "dagster/run_key": request.run_key or ""},
            )
        )
        assert run.success
    engine = connect_master(demo.master_url)
    summary = session_summary(engine, demo.session_id)
    engine.dispose()
    assert summary.status == "done" and summary.dagster_run_id == run.run_id

    page.reload()
    assert page.inner_text("#session-status") == "done"
    assert "Synchronised" in page.inner_text("#load-state")
    assert page.get_attribute("#load-state a[href*='/runs/']", "href") == f"{DAGSTER_UI}/runs/{run.run_id}"
    page.click("#protocol-link")
    page.wait_for_load_state()
    assert "Alex Field" in page.content()
    # Decisions are read-only now: the conflict page offers no buttons.
    page.goto(f"/conflicts/{demo.conflicts['orphan']}")
    assert "Decisions are read-only" in page.inner_text(".notice.info")
    assert page.locator("form[action$='/decide']").count() == 0
