"""Image to image and inpainting over HTTP: /v1/img2img and A1111's /sdapi/v1/img2img (with the
unchanged webuiapi client), each the pipeline's own image for the same inputs and seed."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
import webuiapi
from PIL import Image, ImageFilter
from serving import LiveServer, decode_png

from sdtrt.runtime.pipeline import Pipeline


def _photo() -> Image.Image:
    """A 64x64 test picture with structure the VAE keeps: gradients and a square."""
    y, x = np.mgrid[0:64, 0:64]
    pixels = np.stack([x * 4, y * 4, (x + y) * 2], axis=-1).astype(np.uint8)
    pixels[20:44, 20:44] = (240, 200, 40)
    return Image.fromarray(pixels)


def _mask() -> Image.Image:
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 24:56] = 255
    return Image.fromarray(mask)


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture(scope="module")
def pipe(tiny_engine_dir: Path) -> Pipeline:
    with Pipeline.load(tiny_engine_dir) as pipeline:
        yield pipeline


def _same(png: Image.Image, expected: Image.Image) -> None:
    np.testing.assert_array_equal(np.asarray(png.convert("RGB")), np.asarray(expected))


def test_v1_image_to_image_and_inpainting(server: LiveServer, pipe: Pipeline) -> None:
    base = {"prompt": "a lighthouse", "steps": 4, "seed": 5}
    with server.client() as client:
        moved = client.post("/v1/img2img", json={**base, "image": _b64(_photo()), "strength": 0.6})
        painted = client.post(
            "/v1/img2img",
            json={
                **base,
                "image": "data:image/png;base64," + _b64(_photo()),
                "mask": _b64(_mask()),
            },
        )
    assert moved.status_code == 200, moved.text
    assert painted.status_code == 200, painted.text
    direct = pipe("a lighthouse", num_inference_steps=4, seed=5, image=_photo(), strength=0.6)
    _same(decode_png(moved.json()["images"][0]), direct.images[0])
    direct = pipe("a lighthouse", num_inference_steps=4, seed=5, image=_photo(), mask_image=_mask())
    _same(decode_png(painted.json()["images"][0]), direct.images[0])


@pytest.mark.parametrize(
    ("change", "status", "words"),
    [
        ({"image": "not base64!"}, 400, "image is not base64"),
        ({"image": base64.b64encode(b"hello").decode()}, 400, "cannot be read as an image"),
        ({"strength": 1.5}, 400, "strength must be a number in (0, 1]"),
        ({"mask": None, "padding_mask_crop": 8}, 400, "padding_mask_crop"),
        ({"image": None}, 422, "image"),
    ],
)
def test_bad_images_are_one_line(
    server: LiveServer, change: dict[str, object], status: int, words: str
) -> None:
    body = {"prompt": "x", "steps": 2, "image": _b64(_photo()), **change}
    with server.client() as client:
        response = client.post("/v1/img2img", json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["detail"] and "\n" not in response.json()["detail"]


def test_a_decompression_bomb_is_refused(server: LiveServer) -> None:
    buffer = io.BytesIO()
    Image.new("1", (8200, 8200)).save(buffer, format="PNG")
    bomb = base64.b64encode(buffer.getvalue()).decode("ascii")
    with server.client() as client:
        response = client.post("/v1/img2img", json={"prompt": "x", "steps": 2, "image": bomb})
    assert response.status_code == 400 and "8200x8200 pixels" in response.json()["detail"]


def test_an_a1111_client_sends_img2img_unchanged(server: LiveServer, pipe: Pipeline) -> None:
    host, port = server.url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler a", steps=3)
    moved = api.img2img(
        images=[_photo()], prompt="a red fox", seed=9, denoising_strength=0.5, width=64, height=64
    )
    assert moved.info["all_seeds"] == [9] and moved.info["denoising_strength"] == 0.5
    direct = pipe(
        "a red fox",
        num_inference_steps=3,
        seed=9,
        guidance_scale=7.0,
        scheduler="euler_a",
        image=_photo(),
        strength=0.5,
        height=64,
        width=64,
    )
    _same(moved.image, direct.images[0])
    painted = api.img2img(
        images=[_photo()],
        mask_image=_mask(),
        prompt="a red fox",
        seed=9,
        denoising_strength=0.9,
        mask_blur=4,
        inpaint_full_res=False,
        width=64,
        height=64,
    )
    blurred = _mask().filter(ImageFilter.GaussianBlur(4))
    direct = pipe(
        "a red fox",
        num_inference_steps=3,
        seed=9,
        guidance_scale=7.0,
        scheduler="euler_a",
        image=_photo(),
        mask_image=blurred,
        strength=0.9,
        height=64,
        width=64,
    )
    _same(painted.image, direct.images[0])
    assert painted.parameters["init_images"] is None  # not echoed back
