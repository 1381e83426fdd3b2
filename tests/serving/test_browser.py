"""The web page in a real headless browser: Debian's chromium driven by playwright.

`make test` installs chromium (apt) and playwright (pip); playwright's own browser
download is never used. The screenshot is kept in runs/artifacts/serve-page.png.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from support import ADMIN, TASK, ThreadedServer, entry, make_app

CHROMIUM = os.environ.get("PRLM_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "runs" / "artifacts"
SECRET_B = "zqxvbobsecretkumquat"
# Flags for a closed network: no background connections, no sandbox as root, a fresh profile.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]


def _browser_or_skip():
    missing = []
    if not (Path(CHROMIUM).is_file() or shutil.which(CHROMIUM)):
        missing.append(f"no chromium at {CHROMIUM} (apt-get install chromium; `make test` does it)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("the playwright package is missing (pip install -e '.[dev]')")
    if missing:
        reason = "; ".join(missing)
        if os.environ.get("CI"):  # CI installs both: a skip there would hide a broken set-up
            pytest.fail(f"browser test cannot run in CI: {reason}")
        pytest.skip(reason)


@pytest.mark.slow
def test_page_edit_profile_and_generate(tmp_path, tiny_generator):
    _browser_or_skip()
    from playwright.sync_api import expect, sync_playwright

    from prlm.serving.client import Client

    app, store = make_app(tmp_path / "p.sqlite", *tiny_generator)
    with ThreadedServer(app) as server:
        admin = Client(server.url, ADMIN)
        token = admin.request("POST", "/v1/users", {"user_id": "alice"})[1]["token"]
        bob = Client(server.url, admin.request("POST", "/v1/users", {"user_id": "bob"})[1]["token"])
        assert bob.request("POST", "/v1/users/bob/entries",
                           {"task": TASK, "entries": [entry("b1", SECRET_B, SECRET_B)]})[0] == 201
        alice = Client(server.url, token)
        assert alice.request("POST", "/v1/users/alice/entries", {"task": TASK, "entries": [
            entry("a0", "Museum opens", "The museum opened its doors."),
            entry("a1", "Storm hits harbor", "A storm hit the harbor at night.")]})[0] == 201
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 1200})
            page.goto(server.url + "/")
            # A wrong token is refused on the page.
            page.fill("#token", "prlm_u_wrong")
            page.click("#connect")
            expect(page.locator("#error")).to_contain_text("401")
            # The right one shows alice's profile.
            page.fill("#token", token)
            page.click("#connect")
            expect(page.locator("#who")).to_have_text("signed in as alice")
            page.select_option("#task", TASK)
            expect(page.locator("#entries tr")).to_have_count(2)
            expect(page.locator("#entry-a1")).to_contain_text("Storm hits harbor")
            # Add an entry through the form.
            page.fill("#field-title", "Festival on the bridge")
            page.fill("#field-text", "A festival took over the old bridge.")
            page.fill("#field-date", "2024-06-01")
            page.click("#add")
            expect(page.locator("#entries tr")).to_have_count(3)
            # Delete one.
            page.locator("#entry-a0 button.delete").click()
            expect(page.locator("#entries tr")).to_have_count(2)
            expect(page.locator("#entry-a0")).to_have_count(0)
            # Generate.
            page.fill("#input", "Generate a headline for the following article: a storm reached the harbor.")
            page.fill("#k", "2")
            page.click("#generate")
            expect(page.locator("#result")).to_be_visible(timeout=60_000)
            expect(page.locator("#used li")).to_have_count(2)
            expect(page.locator("#used li").first).to_contain_text("a1")
            assert page.locator("#answer").inner_text().strip() != ""
            assert page.locator("#reasoning").inner_text().strip() != ""
            expect(page.locator("#timings")).to_contain_text("batch of 1")
            assert SECRET_B not in page.content()
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)
            browser.close()
        # The page's edits reached the store.
        titles = [e["title"] for e in alice.request("GET", f"/v1/users/alice/entries?task={TASK}")[1]["entries"]]
        assert titles == ["Storm hits harbor", "Festival on the bridge"]
    store.close()
    assert (ARTIFACTS / "serve-page.png").stat().st_size > 10_000
