"""Take the screenshots of the review page in docs/review-sessions.png and docs/review-conflict.png.

Builds the demo (master, replica, edits on both sides, a sync that waits for the `crm` decisions) in
a throw-away SYNC_HOME, adds an account, serves the page on a free loopback port and photographs it
with headless Chromium from Debian's `chromium` package (Playwright drives it; no browser download).

    .venv/bin/python scripts/screenshot_review.py [--out-dir docs]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
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
PERSON, PASSWORD = "Ada Lovelace", "demo-password"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs")
    args = parser.parse_args()
    if not Path(CHROMIUM).exists():
        sys.exit(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium`")
    with tempfile.TemporaryDirectory(prefix="review-shots-") as folder:
        home = Path(folder)
        os.environ["SYNC_HOME"] = str(home)
        os.environ.pop("SYNC_MASTER_URL", None)
        shoot(home, args.out_dir)


def shoot(home: Path, out_dir: Path) -> None:
    from playwright.sync_api import sync_playwright

    from sync_pipeline.accounts import Accounts
    from sync_pipeline.demo import make_demo_edits, prepare_demo
    from sync_pipeline.engine.master import connect_master
    from sync_pipeline.engine.session import decide, run_sync
    from sync_pipeline.review.app import create_app
    from sync_pipeline.review.server import BackgroundServer

    paths = prepare_demo(home, "Alex Field")
    engine = connect_master(paths.master_url)
    make_demo_edits(engine, paths.replica)
    result = run_sync(engine, paths.replica)
    if result.status != "waiting" or result.session_id is None:
        sys.exit(f"the demo sync should wait for decisions, but it is {result.status}")
    accounts = Accounts([], home / "accounts.yaml")
    accounts.add(PERSON, ["crm"], PASSWORD)
    accounts.save()
    # One field of the first conflict decided, so that the picture shows a decision and its history.
    first = next(c for c in _conflicts(engine, result.session_id) if c["kind"] == "update_update")
    decide(engine, first["id"], "master", PERSON, "updated_at")

    out_dir.mkdir(parents=True, exist_ok=True)
    app = create_app(paths.master_url, home / "accounts.yaml")
    with BackgroundServer(app) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 420}, device_scale_factor=1)
        page.goto(f"{url}/login")
        page.fill("#name", PERSON)
        page.fill("#password", PASSWORD)
        page.click("button[type=submit]")
        page.wait_for_selector("#waiting")
        page.screenshot(path=str(out_dir / "review-sessions.png"))
        page.goto(f"{url}/conflicts/{first['id']}")
        page.wait_for_selector("#fields")
        page.set_viewport_size({"width": 1200, "height": 940})
        page.screenshot(path=str(out_dir / "review-conflict.png"), full_page=True)
        browser.close()
    engine.dispose()
    print(f"wrote {out_dir / 'review-sessions.png'} and {out_dir / 'review-conflict.png'}")


def _conflicts(engine, session_id: str) -> list[dict]:  # type: ignore[no-untyped-def]
    from sync_pipeline.engine.queries import session_conflicts

    return session_conflicts(engine, session_id)


if __name__ == "__main__":
    main()
