"""The A1111 API subset, driven by an unchanged A1111 client (webuiapi) and by raw requests."""

from __future__ import annotations

import base64
import json
import threading
import time

import httpx
import webuiapi
from serving import LiveServer

SIZE = {"width": 64, "height": 64}


def _client(server: LiveServer) -> webuiapi.WebUIApi:
    host, port = server.url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler a", steps=3)


def test_an_a1111_client_works_unchanged(server: LiveServer) -> None:
    api = _client(server)
    result = api.txt2img(prompt="a red fox", seed=7, cfg_scale=7, batch_size=2, **SIZE)
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    assert result.info["all_seeds"] == [7, 8] and result.info["seed"] == 7
    assert result.info["sampler_name"] == "Euler a" and result.info["steps"] == 3
    assert len(result.info["infotexts"]) == 2 and "Seed: 8" in result.info["infotexts"][1]
    assert result.parameters["prompt"] == "a red fox" and "enable_hr" in result.parameters
    names = {sampler["name"] for sampler in api.get_samplers()}
    assert {"Euler a", "DPM++ 2M", "UniPC", "DDIM"} <= names
    assert {s["label"] for s in api.get_schedulers()} == {"Automatic", "Karras"}
    [model] = api.util_get_model_names()
    api.util_set_model(model)
    assert api.get_options()["sd_model_checkpoint"] == model
    assert api.get_scripts() == {"txt2img": [], "img2img": []}
    assert set(api.get_progress()) == {
        "progress",
        "eta_relative",
        "state",
        "current_image",
        "textinfo",
    }
    assert api.interrupt() == {}


def test_each_image_is_its_seed_alone(server: LiveServer) -> None:
    """Image i of a batch is the image that seed + i makes alone, to the byte (as in A1111)."""
    body = {"prompt": "a lighthouse", "seed": 20, "steps": 3, "cfg_scale": 6.0, "n_iter": 2,
            "sampler_name": "DPM++ 2M", "scheduler": "Karras", **SIZE}  # fmt: skip
    with server.client() as client:
        batch = client.post("/sdapi/v1/txt2img", json=body).json()
        alone = client.post(
            "/v1/txt2img",
            json={
                "prompt": "a lighthouse",
                "seed": 21,
                "steps": 3,
                "guidance": 6.0,
                "scheduler": "dpmpp_2m_karras",
                **SIZE,
            },  # fmt: skip
        ).json()
    info = json.loads(batch["info"])
    assert info["all_seeds"] == [20, 21]
    assert base64.b64decode(batch["images"][1]) == base64.b64decode(alone["images"][0])


def test_random_seed_is_reported(server: LiveServer) -> None:
    with server.client() as client:
        answer = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, **SIZE})
    info = json.loads(answer.json()["info"])
    assert answer.json()["parameters"]["seed"] == -1
    assert isinstance(info["seed"], int) and info["seed"] >= 0
    assert info["all_seeds"] == [info["seed"]]


def test_interrupt_stops_only_the_callers_job(server: LiveServer) -> None:
    long_job = {"prompt": "slow", "steps": 400, "seed": 1, **SIZE}
    answers: dict[str, httpx.Response] = {}
    alice = server.client(headers={"X-Client-Id": "alice"})
    bob = server.client(headers={"X-Client-Id": "bob"})
    with alice, bob:
        waiter = threading.Thread(
            target=lambda: answers.update(a=alice.post("/sdapi/v1/txt2img", json=long_job))
        )
        waiter.start()
        limit = time.monotonic() + 30
        while alice.get("/sdapi/v1/progress").json()["state"]["sampling_step"] < 2:
            assert time.monotonic() < limit
            time.sleep(0.02)
        assert bob.post("/sdapi/v1/interrupt").json() == {}  # bob has nothing running
        assert bob.get("/sdapi/v1/progress").json()["state"]["job"] == ""
        before = alice.get("/sdapi/v1/progress").json()
        time.sleep(0.3)
        after = alice.get("/sdapi/v1/progress").json()
        assert after["state"]["sampling_step"] > before["state"]["sampling_step"]
        assert 0 < after["progress"] < 1 and after["state"]["job"].startswith("task(")
        alice.post("/sdapi/v1/interrupt")
        waiter.join(30)
    assert answers["a"].status_code == 200 and answers["a"].json()["images"] == []


def test_prompts_are_read_in_a1111_syntax(server: LiveServer, tiny_engine_dir) -> None:  # type: ignore[no-untyped-def]
    """What A1111's clients write, `(word:1.4)` and `[word]`, weighs as it does in A1111."""
    import numpy as np
    from serving import decode_png

    from sdtrt.runtime.pipeline import Pipeline

    prompt = "a (red:1.4) fox in the [snow]"
    body = {"prompt": prompt, "seed": 8, "steps": 3, "sampler_name": "Euler", **SIZE}
    with server.client() as client:
        answer = client.post("/sdapi/v1/txt2img", json=body)
    assert answer.status_code == 200, answer.text
    pixels = np.asarray(decode_png(answer.json()["images"][0]).convert("RGB"))
    with Pipeline.load(tiny_engine_dir) as pipe:
        settings = dict(num_inference_steps=3, seed=8, guidance_scale=7.0, scheduler="euler")
        weighted = pipe(prompt, prompt_syntax="a1111", **settings, **SIZE).images[0]
        literal = pipe(prompt, **settings, **SIZE).images[0]
    np.testing.assert_array_equal(pixels, np.asarray(weighted))
    assert not np.array_equal(pixels, np.asarray(literal))
