"""ControlNets over HTTP: /v1's control units and the A1111 ControlNet extension's units (with
the unchanged webuiapi client), each the pipeline's own image for the same hints and seed; what
the server cannot do is one 400."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import webuiapi
from PIL import Image
from serving import LiveServer, decode_png, live_server

from sdtrt.runtime.hint_preprocessors import canny
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.serve.app import ServeOptions


def _hint(shift: int = 0) -> Image.Image:
    y, x = np.mgrid[0:64, 0:64]
    lines = np.stack([(x + shift) % 16 < 3, y % 16 < 3, (x + y) % 20 < 2], axis=-1)
    return Image.fromarray((lines * 255).astype(np.uint8))


def _b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture(scope="module")
def controlled(tiny_controlnet_engine_dir: Path) -> Iterator[LiveServer]:
    with live_server(tiny_controlnet_engine_dir, ServeOptions(max_steps=100)) as live:
        yield live


@pytest.fixture(scope="module")
def pipe(tiny_controlnet_engine_dir: Path) -> Iterator[Pipeline]:
    with Pipeline.load(tiny_controlnet_engine_dir) as pipeline:
        yield pipeline


def _same(png: Image.Image, expected: Image.Image) -> None:
    np.testing.assert_array_equal(np.asarray(png.convert("RGB")), np.asarray(expected))


def test_v1_control_units_make_the_pipelines_image(controlled: LiveServer, pipe: Pipeline) -> None:
    units = [
        {"image": _b64(_hint()), "controlnet": "tiny-controlnet", "scale": 0.7, "end": 0.6},
        {"image": _b64(_hint(5)), "controlnet": "tiny-controlnet-2", "scale": 1.1},
    ]
    body = {"prompt": "a lighthouse", "steps": 4, "seed": 5, "control": units}
    with controlled.client() as client:
        answer = client.post("/v1/txt2img", json=body)
    assert answer.status_code == 200, answer.text
    expected = pipe(
        "a lighthouse",
        num_inference_steps=4,
        seed=5,
        control_image=[_hint(), _hint(5)],
        controlnet=["tiny-controlnet", "tiny-controlnet-2"],
        controlnet_conditioning_scale=[0.7, 1.1],
        control_guidance_end=[0.6, 1.0],
    ).images[0]
    _same(decode_png(answer.json()["images"][0]), expected)
    assert 'ControlNet 1: "Model: tiny-controlnet-2, Weight: 1.1' in answer.json()["parameters"][0]


def test_a1111_controlnet_units_from_webuiapi(controlled: LiveServer, pipe: Pipeline) -> None:
    host, port = controlled.url.removeprefix("http://").split(":")
    api = webuiapi.WebUIApi(host=host, port=int(port))
    assert api.controlnet_model_list() == ["tiny-controlnet", "tiny-controlnet-2"]
    unit = webuiapi.ControlNetUnit(
        image=_hint(), model="tiny-controlnet [0123abcd]", weight=0.8, guidance_end=0.5
    )
    result = api.txt2img(
        prompt="a fox", steps=4, seed=9, cfg_scale=7.5, sampler_name="PNDM",
        width=64, height=64, controlnet_units=[unit],
        # webuiapi writes the units into its default `alwayson_scripts={}`, which every later
        # call in this process would otherwise send: a dict of this call's own.
        alwayson_scripts={},
    )  # fmt: skip
    expected = pipe(
        "a fox",
        num_inference_steps=4,
        guidance_scale=7.5,
        seed=9,
        scheduler="PNDM",
        control_image=[_hint()],
        controlnet=["tiny-controlnet"],
        controlnet_conditioning_scale=[0.8],
        control_guidance_end=[0.5],
    ).images[0]
    _same(result.image, expected)


def test_canny_units_make_their_hints_from_the_photo(
    controlled: LiveServer, pipe: Pipeline
) -> None:
    photo = Image.fromarray((np.random.default_rng(7).random((64, 64, 3)) * 255).astype(np.uint8))
    unit = {"image": _b64(photo), "module": "canny", "model": "tiny-controlnet",
            "threshold_a": 50, "threshold_b": 150, "processor_res": 256}  # fmt: skip
    a1111 = {"prompt": "a fox", "steps": 3, "seed": 2, "width": 64, "height": 64,
             "cfg_scale": 7.5, "sampler_name": "PNDM",
             "alwayson_scripts": {"controlnet": {"args": [unit]}}}  # fmt: skip
    v1 = {"prompt": "a fox", "steps": 3, "seed": 2, "width": 64, "height": 64,
          "control": [{"image": _b64(photo), "controlnet": "tiny-controlnet",
                       "preprocessor": "canny", "thresholds": [50, 150]}]}  # fmt: skip
    with controlled.client() as client:
        modules = client.get("/controlnet/module_list").json()["module_list"]
        from_a1111 = client.post("/sdapi/v1/txt2img", json=a1111)
        from_v1 = client.post("/v1/txt2img", json=v1)
    assert modules == ["none", "canny"]
    assert from_a1111.status_code == 200, from_a1111.text
    assert from_v1.status_code == 200, from_v1.text

    def expected(resolution: int) -> Image.Image:
        edges = canny(photo, 50, 150, resolution)
        return pipe("a fox", num_inference_steps=3, seed=2, controlnet="tiny-controlnet",
                    control_image=edges, width=64, height=64).images[0]  # fmt: skip

    _same(decode_png(from_a1111.json()["images"][0]), expected(256))
    _same(decode_png(from_v1.json()["images"][0]), expected(512))


def test_what_the_server_cannot_do_is_one_400(controlled: LiveServer, server: LiveServer) -> None:
    hint = _b64(_hint())
    unit = {"image": hint, "module": "depth", "model": "tiny-controlnet"}
    a1111 = {"prompt": "a fox", "steps": 2, "alwayson_scripts": {"ControlNet": {"args": [unit]}}}
    with controlled.client() as client:
        depth = client.post("/sdapi/v1/txt2img", json=a1111)
        unit.update(module="none", control_mode="My prompt is more important")
        mode = client.post("/sdapi/v1/txt2img", json=a1111)
        mask = Image.new("L", (64, 64))
        mask.paste(255, (16, 16, 48, 48))
        cropped = client.post(
            "/v1/img2img",
            json={"prompt": "a fox", "steps": 2, "image": hint, "mask": _b64(mask),
                  "padding_mask_crop": 8,
                  "control": [{"image": hint, "controlnet": "tiny-controlnet"}]},
        )  # fmt: skip
        unknown = client.post(
            "/v1/txt2img",
            json={"prompt": "a fox", "steps": 2, "control": [{"image": hint, "controlnet": "x"}]},
        )
    assert depth.status_code == 400 and "unknown hint preprocessor 'depth'" in depth.text
    assert mode.status_code == 400 and "control mode 'My prompt is more important'" in mode.text
    assert unknown.status_code == 400 and "no ControlNet 'x' was built here" in unknown.text
    assert cropped.status_code == 400 and "does not take ControlNets yet" in cropped.text
    with server.client() as client:  # engines built without ControlNets
        plain = client.post("/v1/txt2img", json={"prompt": "a", "control": [{"image": hint}]})
    assert plain.status_code == 400 and "these engines have no ControlNet" in plain.text
