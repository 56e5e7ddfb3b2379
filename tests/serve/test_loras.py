"""LoRAs by name: `<lora:NAME:WEIGHT>` in A1111 prompts and /v1's `loras`, switched per job."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from serving import decode_png, live_server

from sdtrt.errors import InputError
from sdtrt.runtime.lora_library import take_tags
from sdtrt.runtime.pipeline import Pipeline
from sdtrt.serve.app import ServeOptions


def test_tags_come_out_of_the_prompt() -> None:
    assert take_tags("a fox <lora:fox:0.8>, snow <LORA:style>") == (
        "a fox , snow",
        {"fox": 0.8, "style": 1.0},
    )
    assert take_tags("<lora:fox:0.5> x <lora:fox:0.25>")[1] == {"fox": 0.75}
    with pytest.raises(InputError, match="is not a number"):
        take_tags("<lora:fox:lots>")


def test_loras_by_name_switch_per_job(
    tiny_engine_dir: Path, lora_files: dict[str, Path], tmp_path: Path
) -> None:
    folder = tmp_path / "loras"
    (folder / "styles").mkdir(parents=True)
    shutil.copy(lora_files["diffusers"], folder / "fox.safetensors")
    shutil.copy(lora_files["kohya"], folder / "styles" / "ink.safetensors")
    base = {"steps": 3, "seed": 4, "width": 64, "height": 64, "sampler_name": "Euler"}
    with live_server(tiny_engine_dir, ServeOptions(lora_dir=folder)) as live:
        with live.client() as client:
            listed = client.get("/sdapi/v1/loras").json()
            tagged = client.post(
                "/sdapi/v1/txt2img", json={**base, "prompt": "a red fox <lora:fox:0.8>"}
            )
            plain = client.post("/sdapi/v1/txt2img", json={**base, "prompt": "a red fox"})
            v1 = client.post(
                "/v1/txt2img",
                json={"prompt": "a red fox", "steps": 3, "seed": 4, "loras": {"ink": 1.5}},
            )
            unknown = client.post("/sdapi/v1/txt2img", json={**base, "prompt": "<lora:cat> x"})
    assert {item["name"] for item in listed} == {"fox", "ink"}
    assert tagged.status_code == plain.status_code == v1.status_code == 200, tagged.text
    assert unknown.status_code == 400 and "unknown LoRA 'cat'" in unknown.json()["detail"]
    with Pipeline.load(tiny_engine_dir) as pipe:
        settings = dict(num_inference_steps=3, seed=4, height=64, width=64)
        pipe.set_loras([(folder / "fox.safetensors", 0.8)])
        with_fox = pipe("a red fox", scheduler="euler", guidance_scale=7.0, **settings)
        pipe.set_loras([(folder / "styles" / "ink.safetensors", 1.5)])
        with_ink = pipe("a red fox", **settings)
        pipe.set_loras([])
        without = pipe("a red fox", scheduler="euler", guidance_scale=7.0, **settings)

    def pixels(answer: object) -> np.ndarray:
        return np.asarray(decode_png(answer.json()["images"][0]).convert("RGB"))  # type: ignore[attr-defined]

    np.testing.assert_array_equal(pixels(tagged), np.asarray(with_fox.images[0]))
    np.testing.assert_array_equal(pixels(plain), np.asarray(without.images[0]))
    np.testing.assert_array_equal(pixels(v1), np.asarray(with_ink.images[0]))
    assert not np.array_equal(pixels(tagged), pixels(plain))
