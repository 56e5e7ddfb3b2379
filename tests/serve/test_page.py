"""The web page in a real headless browser (Debian's chromium driven by Playwright)."""

from __future__ import annotations

import base64
import io
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
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


@pytest.fixture
def page(server: LiveServer) -> Iterator[Any]:
    """The page, loaded and ready, in a fresh headless Chromium; fails the test on any script
    error the page raised."""
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
            yield page
            assert not errors, errors
        finally:
            browser.close()


def _generate(page: Any, images_before: int) -> None:
    from playwright.sync_api import expect

    page.click("#generate")
    expect(page.locator("#history img")).to_have_count(images_before + 1, timeout=60_000)
    expect(page.locator("#status")).to_contain_text("done")


def _pixels(page: Any) -> np.ndarray:
    source = page.locator("#images figure img").get_attribute("src")
    png = base64.b64decode(source.removeprefix("data:image/png;base64,"))
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_generate_see_the_image_and_cancel_a_long_job(page: Any, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    expect(page.locator("#model")).to_contain_text("tiny")
    assert page.locator("#scheduler option").count() > 10

    page.fill("#prompt", "a watercolor fox in the snow")
    page.fill("#steps", "4")
    page.fill("#seed", "42")
    _generate(page, images_before=0)
    image = page.locator("#images figure img")
    expect(image).to_have_count(1)
    assert image.evaluate("img => img.complete && img.naturalWidth") == 64
    expect(page.locator("#images figcaption")).to_contain_text("seed 42")
    assert page.locator("progress#progress").evaluate("p => p.value") == 1

    page.fill("#steps", "400")
    page.click("#generate")
    expect(page.locator("#status")).to_contain_text("running: step", timeout=30_000)
    expect(page.locator("#cancel")).to_be_enabled()
    page.click("#cancel")
    expect(page.locator("#status")).to_have_text("cancelled", timeout=30_000)
    expect(page.locator("#generate")).to_be_enabled()
    expect(page.locator("#history img")).to_have_count(1)  # nothing added by the cancel

    page.fill("#steps", "3")
    _generate(page, images_before=1)
    screenshot = tmp_path / "page.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 10_000


def test_the_seed_shown_remakes_the_image(page: Any) -> None:
    from playwright.sync_api import expect

    page.fill("#prompt", "a lighthouse on a cliff at dusk")
    page.fill("#steps", "3")
    _generate(page, images_before=0)  # the seed field left empty: a random seed
    shown = page.locator("#images figcaption button.seed").inner_text()
    first = _pixels(page)

    page.fill("#seed", shown)  # copied by hand from the caption
    _generate(page, images_before=1)
    expect(page.locator("#images figcaption button.seed")).to_have_text(shown)
    np.testing.assert_array_equal(_pixels(page), first)

    # The biggest seed a user may type, past the 2**53 that JavaScript's numbers hold exactly.
    biggest = str(2**64 - 1)
    page.fill("#seed", biggest)
    _generate(page, images_before=2)
    expect(page.locator("#images figcaption button.seed")).to_have_text(biggest)
    page.fill("#seed", "")
    page.click("#images figcaption button.seed")  # the caption's seed, back into the field
    expect(page.locator("#seed")).to_have_value(biggest)
    assert not np.array_equal(_pixels(page), first)
