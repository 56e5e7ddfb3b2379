"""The web page in a real headless browser (Debian's chromium driven by Playwright)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from serving import LiveServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium on this machine (`make test` installs Debian's when run as root)",
)
# Headless in a container: no sandbox (root), no GPU, nothing fetched from the network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def test_generate_see_the_image_and_cancel_a_long_job(server: LiveServer, tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(server.url + "/")
            expect(page.locator("#status")).to_have_text("ready", timeout=30_000)
            expect(page.locator("#model")).to_contain_text("tiny")
            assert page.locator("#scheduler option").count() > 10

            page.fill("#prompt", "a watercolor fox in the snow")
            page.fill("#steps", "4")
            page.fill("#seed", "42")
            page.click("#generate")
            image = page.locator("#images figure img")
            expect(image).to_have_count(1, timeout=60_000)
            expect(page.locator("#status")).to_contain_text("done")
            assert image.evaluate("img => img.complete && img.naturalWidth") == 64
            expect(page.locator("#images figcaption")).to_contain_text("seed 42")
            expect(page.locator("#history img")).to_have_count(1)
            assert page.locator("progress#progress").evaluate("p => p.value") == 1

            page.fill("#steps", "400")
            page.click("#generate")
            expect(page.locator("#status")).to_contain_text("running: step", timeout=30_000)
            expect(page.locator("#cancel")).to_be_enabled()
            page.click("#cancel")
            expect(page.locator("#status")).to_have_text("cancelled", timeout=30_000)
            expect(page.locator("#generate")).to_be_enabled()
            expect(page.locator("#history img")).to_have_count(1)  # nothing added by the cancel
            assert not errors, errors

            page.fill("#steps", "3")
            page.click("#generate")
            expect(page.locator("#history img")).to_have_count(2, timeout=60_000)
            screenshot = tmp_path / "page.png"
            page.screenshot(path=str(screenshot), full_page=True)
            assert screenshot.stat().st_size > 10_000
        finally:
            browser.close()
