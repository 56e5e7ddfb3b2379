"""Several models in one server: each request names its model (or takes the default), models
load on first use and the least recently used idle ones unload to stay within the budget."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from serving import decode_png, live_server

from sdtrt.engine.manifest import read_manifest
from sdtrt.errors import InputError
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.serve.models import ModelSet
from sdtrt.serve.service import Service

QUICK = {"prompt": "a red fox", "steps": 3, "seed": 5}


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(decode_png(b64).convert("RGB"))


def test_each_request_draws_with_the_model_it_names(tiny_engine_dir: Path, preset_build) -> None:
    _, sdxl = preset_build("tiny-sdxl")
    with live_server(tiny_engine_dir, more_models=[sdxl]) as live, live.client() as client:
        info = client.get("/v1/info").json()
        assert info["model"] == "tiny" and info["models"] == ["tiny", "tiny-sdxl"]
        assert live.models.models["tiny-sdxl"].service is None  # not loaded before it is asked
        v1 = client.post("/v1/txt2img", json={**QUICK, "model": "tiny-sdxl"})
        default = client.post("/v1/txt2img", json=QUICK)
        titles = [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
        a1111 = {**QUICK, "cfg_scale": 5, "sampler_name": "Euler"}
        picked = client.post(
            "/sdapi/v1/txt2img",
            json={**a1111, "override_settings": {"sd_model_checkpoint": titles[1]}},
        )
        assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": titles[1]}).is_success
        chosen = client.post("/sdapi/v1/txt2img", json=a1111)  # the new default
        options = client.get("/sdapi/v1/options").json()
        unknown = client.post("/v1/txt2img", json={**QUICK, "model": "sd3"})
    assert v1.status_code == default.status_code == picked.status_code == 200, v1.text
    assert options["sd_model_checkpoint"] == titles[1]
    assert unknown.status_code == 400 and "unknown model 'sd3'" in unknown.json()["detail"]
    with Pipeline.load(sdxl) as pipe:
        expected = np.asarray(pipe("a red fox", num_inference_steps=3, seed=5).images[0])
        from_a1111 = pipe("a red fox", num_inference_steps=3, seed=5, guidance_scale=5,
                          scheduler="euler").images[0]  # fmt: skip
    with Pipeline.load(tiny_engine_dir) as pipe:
        tiny = np.asarray(pipe("a red fox", num_inference_steps=3, seed=5).images[0])
    np.testing.assert_array_equal(_pixels(v1.json()["images"][0]), expected)
    np.testing.assert_array_equal(_pixels(default.json()["images"][0]), tiny)
    for answer in (picked, chosen):
        np.testing.assert_array_equal(_pixels(answer.json()["images"][0]), from_a1111)


def test_the_least_recently_used_idle_model_makes_room(
    tiny_engine_dir: Path, tmp_path: Path
) -> None:
    copies = []
    for name in ("second", "third"):
        shutil.copytree(tiny_engine_dir, tmp_path / name)
        copies.append(tmp_path / name)
    manifest = read_manifest(tiny_engine_dir)
    one = sum(size for c in manifest.components.values() for size in c.files.values())
    with live_server(tiny_engine_dir, more_models=copies, budget_bytes=2 * one) as live:
        with live.client() as client:
            assert client.post("/v1/txt2img", json={**QUICK, "model": "second"}).is_success
            assert live.models.models["second"].service is not None
            assert client.post("/v1/txt2img", json={**QUICK, "model": "third"}).is_success
            assert live.models.models["second"].service is None  # unloaded for the third
            assert live.models.models["tiny"].service is not None  # the default stays
            assert client.post("/v1/txt2img", json=QUICK).is_success


def test_two_directories_of_one_name_are_refused(tiny_engine_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(tiny_engine_dir, tmp_path / tiny_engine_dir.name)
    with pytest.raises(InputError, match="both called"):
        ModelSet([tiny_engine_dir, tmp_path / tiny_engine_dir.name], Service)


@pytest.mark.slow  # builds the tiny SDXL refiner besides the base: ~50 s on two cores
def test_a_refiner_finishes_what_the_base_model_began(preset_build) -> None:
    """SDXL's ensemble of experts over /v1 and A1111: the base model to 80 % of the steps, the
    refiner from there, as diffusers' denoising_end and denoising_start do it."""
    _, base = preset_build("tiny-sdxl")
    _, refiner = preset_build("tiny-sdxl-refiner")
    request = {"prompt": "a red fox", "steps": 5, "seed": 5, "refiner": "tiny-sdxl-refiner"}
    a1111 = {
        "prompt": "a red fox",
        "steps": 5,
        "seed": 5,
        "cfg_scale": 5,
        "sampler_name": "Euler",
        "refiner_checkpoint": "tiny-sdxl-refiner",
        "refiner_switch_at": 0.6,
    }
    with live_server(base, more_models=[refiner]) as live, live.client() as client:
        v1 = client.post("/v1/txt2img", json=request)
        from_a1111 = client.post("/sdapi/v1/txt2img", json=a1111)
        unknown = client.post("/v1/txt2img", json={**request, "refiner": "nope"})
    assert v1.status_code == from_a1111.status_code == 200, v1.text
    assert unknown.status_code == 400 and "unknown model 'nope'" in unknown.json()["detail"]
    with Pipeline.load(base) as first, Pipeline.load(refiner) as second:

        def ensemble(switch_at: float, **settings: object) -> np.ndarray:
            common = dict(num_inference_steps=5, seed=5, **settings)
            latents = first("a red fox", denoising_end=switch_at, output_type="latent", **common)
            finished = second(
                "a red fox", image=latents.images, denoising_start=switch_at, **common
            )
            return np.asarray(finished.images[0])

        np.testing.assert_array_equal(_pixels(v1.json()["images"][0]), ensemble(0.8))
        expected = ensemble(0.6, guidance_scale=5, scheduler="euler")
        np.testing.assert_array_equal(_pixels(from_a1111.json()["images"][0]), expected)
