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


def test_image_to_image_and_a_painted_mask(
    page: Any, tiny_engine_dir: Path, tmp_path: Path
) -> None:
    """Upload an image, generate from it; paint a mask over it, inpaint: each the pipeline's own
    image for what the page sent."""
    from playwright.sync_api import expect

    from sdtrt.runtime.pipeline import Pipeline

    y, x = np.mgrid[0:64, 0:64]
    photo = Image.fromarray(np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8))
    photo.save(tmp_path / "photo.png")
    page.fill("#prompt", "a lighthouse")
    page.fill("#steps", "3")
    page.fill("#seed", "42")
    page.click("#image-task summary")
    page.set_input_files("#init-image", str(tmp_path / "photo.png"))
    expect(page.locator("#canvases")).to_be_visible()
    page.fill("#strength", "0.6")
    with page.expect_request(lambda request: "/v1/img2img" in request.url) as moved:
        _generate(page, images_before=0)
    sent = moved.value.post_data_json
    assert sent["mask"] is None and sent["strength"] == 0.6
    first = _pixels(page)

    box = page.locator("#mask-canvas").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.6, steps=12)
    page.mouse.up()
    with page.expect_request(lambda request: "/v1/img2img" in request.url) as painted:
        _generate(page, images_before=1)
    mask_url = painted.value.post_data_json["mask"]
    mask = Image.open(io.BytesIO(base64.b64decode(mask_url.partition(",")[2])))
    pixels = np.asarray(mask.convert("L"))
    assert mask.size == (64, 64) and 0 < (pixels > 127).mean() < 0.5  # the stroke, not all
    second = _pixels(page)

    with Pipeline.load(tiny_engine_dir) as pipe:
        common = dict(num_inference_steps=3, seed=42, guidance_scale=7.5, height=64, width=64)
        direct = pipe("a lighthouse", image=photo, strength=0.6, **common)
        np.testing.assert_array_equal(first, np.asarray(direct.images[0]))
        direct = pipe("a lighthouse", image=photo, mask_image=mask, strength=0.6, **common)
        np.testing.assert_array_equal(second, np.asarray(direct.images[0]))


def test_the_page_picks_the_model(tiny_engine_dir: Path, tmp_path: Path) -> None:
    import shutil

    from playwright.sync_api import expect, sync_playwright
    from serving import live_server

    shutil.copytree(tiny_engine_dir, tmp_path / "second")
    with live_server(tiny_engine_dir, more_models=[tmp_path / "second"]) as live:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
            )
            try:
                page = browser.new_page()
                page.goto(live.url + "/")
                expect(page.locator("#status")).to_have_text("ready", timeout=30_000)
                assert page.locator("#model-select option").all_inner_texts() == [
                    "tiny",
                    "second",
                ]
                page.select_option("#model-select", "second")
                expect(page.locator("#status")).to_have_text("ready")
                page.fill("#steps", "2")
                with page.expect_request(lambda r: "/v1/txt2img" in r.url) as sent:
                    _generate(page, images_before=0)
                assert sent.value.post_data_json["model"] == "second"
                assert live.models.models["second"].service is not None
            finally:
                browser.close()
