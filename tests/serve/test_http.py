"""The HTTP API on a real uvicorn on 127.0.0.1: /v1, probes, metrics, keys, SIGTERM drain."""

from __future__ import annotations

import base64
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from serving import LiveServer, decode_png, live_server

from sdtrt.runtime.pipeline import Pipeline
from sdtrt.serve import Service
from sdtrt.serve.app import ServeOptions, create_app

QUICK = {"prompt": "a red fox", "steps": 3, "seed": 11}
LONG = {"prompt": "a long job", "steps": 400, "seed": 5}


def _wait_state(client: httpx.Client, job_id: str, states: set[str], timeout: float = 60) -> dict:
    limit = time.monotonic() + timeout
    while time.monotonic() < limit:
        status = client.get(f"/v1/jobs/{job_id}").json()
        if status["state"] in states and (status["state"] != "running" or status["step"] > 0):
            return status  # type: ignore[no-any-return]
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} never reached {states}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_probes_docs_and_page(server: LiveServer) -> None:
    with server.client() as client:
        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").status_code == 200
        assert client.get("/docs").status_code == 200
        assert "/v1/txt2img" in client.get("/openapi.json").json()["paths"]
        page = client.get("/")
        assert page.status_code == 200 and 'id="generate"' in page.text
        # No CDN: the page loads nothing from elsewhere (the machine may be offline).
        assert 'src="http' not in page.text and 'href="http' not in page.text


def test_txt2img_returns_pngs_seeds_and_timings(server: LiveServer, tiny_engine_dir: Path) -> None:
    with server.client() as client:
        response = client.post("/v1/txt2img", json={**QUICK, "batch": 2})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["seeds"] == [11, 11] and len(body["images"]) == 2
    image = decode_png(body["images"][1])
    assert "Seed: 11" in image.text["parameters"] and "Batch pos: 1" in image.text["parameters"]
    assert body["timings"]["unet"] > 0 and body["timings"]["total"] >= body["timings"]["unet"]
    with Pipeline.load(tiny_engine_dir) as pipe:
        direct = pipe("a red fox", num_inference_steps=3, seed=11, num_images_per_prompt=2)
    assert image.convert("RGB").tobytes() == direct.images[1].tobytes()  # type: ignore[union-attr]


def test_a_seed_may_come_as_its_digits(server: LiveServer) -> None:
    """Browsers hold integers exactly only up to 2**53: a seed sent as a string is the same seed."""
    biggest = 2**64 - 1
    with server.client() as client:
        as_number = client.post("/v1/txt2img", json={**QUICK, "seed": biggest})
        as_text = client.post("/v1/txt2img", json={**QUICK, "seed": str(biggest)})
    assert as_number.status_code == as_text.status_code == 200, as_text.text
    assert as_text.json()["seeds"] == [biggest]
    assert as_text.json()["images"] == as_number.json()["images"]


def test_job_status_events_and_cancel_of_that_job_only(server: LiveServer) -> None:
    with server.client() as client:
        long_job = client.post("/v1/txt2img?wait=false", json=LONG)
        assert long_job.status_code == 202
        long_id = long_job.json()["id"]
        quick_id = client.post("/v1/txt2img?wait=false", json=QUICK).json()["id"]
        status = _wait_state(client, long_id, {"running"})
        assert status["steps"] >= 400 and status["queue_position"] is None
        assert client.get(f"/v1/jobs/{quick_id}").json()["queue_position"] == 1
        events: list[tuple[str, dict]] = []
        with client.stream("GET", f"/v1/jobs/{long_id}/events") as stream:
            for chunk in stream.iter_text():
                for block in chunk.strip().split("\n\n"):
                    kind, data = block.split("\n")
                    events.append((kind.removeprefix("event: "), json.loads(data[6:])))
                if len(events) >= 3 and not any(kind == "done" for kind, _ in events):
                    assert client.delete(f"/v1/jobs/{long_id}").status_code == 202
                if any(kind == "done" for kind, _ in events):
                    break
        steps = [data["step"] for kind, data in events if kind == "progress"]
        assert steps == sorted(steps) and len(steps) >= 3
        assert events[-1][0] == "done" and events[-1][1]["state"] == "cancelled"
        quick = _wait_state(client, quick_id, {"succeeded", "failed", "cancelled"})
        assert quick["state"] == "succeeded" and len(quick["result"]["images"]) == 1
        assert client.get("/v1/jobs/nope").status_code == 404
        assert client.delete("/v1/jobs/nope").status_code == 404


def test_client_disconnect_cancels_its_job(server: LiveServer) -> None:
    with server.client(headers={"X-Client-Id": "leaves-early"}, timeout=1.0) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/txt2img", json=LONG)
    [job] = server.service.jobs_of("127.0.0.1|-|leaves-early")
    assert job.done.wait(30)
    assert job.state.value == "cancelled" and job.step < job.total_steps


def test_full_queue_answers_429_with_retry_after(server: LiveServer) -> None:
    with server.client() as client:
        ids = [client.post("/v1/txt2img?wait=false", json=LONG).json()["id"]]
        _wait_state(client, ids[0], {"running"})
        ids += [client.post("/v1/txt2img?wait=false", json=LONG).json()["id"] for _ in range(4)]
        refused = client.post("/v1/txt2img", json=QUICK)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert "queue is full" in refused.json()["detail"]
        for job_id in reversed(ids):
            client.delete(f"/v1/jobs/{job_id}")
        _wait_state(client, ids[0], {"cancelled"})
        metrics = client.get("/metrics").text
    assert 'sdtrt_jobs_total{outcome="rejected"} 1.0' in metrics
    assert "sdtrt_queue_depth" in metrics
    assert 'sdtrt_stage_seconds_bucket{le="0.005",stage' in metrics


def test_readyz_is_503_until_warm(tiny_engine_dir: Path) -> None:
    gate = threading.Event()

    def slow_loader(directory: Path) -> Pipeline:
        gate.wait(30)
        return Pipeline.load(directory)

    service = Service(tiny_engine_dir, workers=1, loader=slow_loader)
    with TestClient(create_app(service), base_url="http://localhost") as client:
        assert client.get("/readyz").status_code == 503
        refused = client.post("/v1/txt2img", json=QUICK)
        assert refused.status_code == 503 and "warming up" in refused.json()["detail"]
        assert client.get("/healthz").status_code == 200
        gate.set()
        service.wait_ready(60)
        assert client.get("/readyz").status_code == 200


def test_api_key_guards_every_route_but_healthz(tiny_engine_dir: Path) -> None:
    with live_server(tiny_engine_dir, ServeOptions(api_key="s3cret")) as live:
        with live.client() as client:
            assert client.get("/healthz").status_code == 200
            for path in ("/readyz", "/metrics", "/v1/info", "/sdapi/v1/samplers"):
                refused = client.get(path)
                assert refused.status_code == 401, path
                assert refused.headers["WWW-Authenticate"] == "Bearer"
            assert client.post("/v1/txt2img", json=QUICK).status_code == 401
            wrong = {"Authorization": "Bearer guess"}
            assert client.get("/v1/info", headers=wrong).status_code == 401
            right = {"Authorization": "Bearer s3cret"}
            assert client.get("/v1/info", headers=right).status_code == 200
            assert client.post("/v1/txt2img", json=QUICK, headers=right).status_code == 200


def test_non_loopback_without_key_warns(
    tiny_engine_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from sdtrt.serve.server import prepare

    with caplog.at_level(logging.WARNING):
        prepare(tiny_engine_dir, host="0.0.0.0", port=_free_port())
    assert any("without --api-key" in record.getMessage() for record in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        prepare(tiny_engine_dir, host="127.0.0.1", port=_free_port())
        prepare(tiny_engine_dir, host="0.0.0.0", port=_free_port(), api_key="k")
    assert not caplog.records


def test_cli_refuses_a_missing_directory_in_one_line(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sdtrt.cli", "serve", str(tmp_path / "nothing")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip().startswith("error:") and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_sigterm_drains_the_running_job(tiny_engine_dir: Path) -> None:
    port = _free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "sdtrt.cli", "serve", str(tiny_engine_dir), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    answer: dict[str, httpx.Response] = {}
    try:
        with httpx.Client(base_url=url, timeout=60) as client:
            limit = time.monotonic() + 90
            while time.monotonic() < limit:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            body = {"prompt": "drained", "steps": 60, "seed": 3}
            waiter = threading.Thread(
                target=lambda: answer.update(r=client.post("/v1/txt2img", json=body))
            )
            waiter.start()
            time.sleep(0.5)  # the job is running
            process.send_signal(signal.SIGTERM)
            waiter.join(60)
        # uvicorn re-raises the signal once it has shut down cleanly, as a killed process would.
        assert process.wait(60) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert answer["r"].status_code == 200
    assert base64.b64decode(answer["r"].json()["images"][0]).startswith(b"\x89PNG")


def test_sdxl_engines_serve_with_the_models_defaults(preset_build) -> None:
    """An SDXL engine directory behind the same API: guidance defaults to SDXL's 5 and no
    negative prompt means zero conditioning, as the pipeline (and diffusers) make them."""
    _, engines = preset_build("tiny-sdxl")
    with live_server(engines) as live, live.client() as client:
        response = client.post("/v1/txt2img", json={"prompt": "a red fox", "steps": 3, "seed": 5})
        a1111 = client.post("/sdapi/v1/txt2img", json={"prompt": "a red fox", "steps": 3,
                                                       "seed": 5, "cfg_scale": 5})  # fmt: skip
    assert response.status_code == 200, response.text
    assert a1111.status_code == 200, a1111.text
    image = decode_png(response.json()["images"][0])
    assert "CFG scale: 5.0" in image.text["parameters"]
    with Pipeline.load(engines) as pipe:
        direct = pipe("a red fox", num_inference_steps=3, seed=5).images[0]
    assert image.convert("RGB").tobytes() == direct.tobytes()  # type: ignore[union-attr]
    from_a1111 = decode_png(a1111.json()["images"][0])
    assert from_a1111.convert("RGB").tobytes() == direct.tobytes()  # type: ignore[union-attr]


def test_sdxl_prompt_2_and_size_conditioning(preset_build, tiny_engine_dir: Path) -> None:
    _, engines = preset_build("tiny-sdxl")
    body = {
        "prompt": "a red fox",
        "prompt_2": "oil on canvas",
        "negative_prompt_2": "blurry",
        "original_size": [512, 384],
        "crops_coords_top_left": [16, 0],
        "target_size": [64, 64],
        "steps": 3,
        "seed": 5,
    }
    with live_server(engines) as live, live.client() as client:
        response = client.post("/v1/txt2img", json=body)
    assert response.status_code == 200, response.text
    with Pipeline.load(engines) as pipe:
        direct = pipe(
            "a red fox",
            prompt_2="oil on canvas",
            negative_prompt_2="blurry",
            original_size=(512, 384),
            crops_coords_top_left=(16, 0),
            target_size=(64, 64),
            num_inference_steps=3,
            seed=5,
        ).images[0]
        plain = pipe("a red fox", num_inference_steps=3, seed=5).images[0]
    image = decode_png(response.json()["images"][0]).convert("RGB")
    assert image.tobytes() == direct.tobytes()  # type: ignore[union-attr]
    assert image.tobytes() != plain.tobytes()  # type: ignore[union-attr]
    with live_server(tiny_engine_dir) as live, live.client() as client:  # SD 1.x: refused
        refused = client.post("/v1/txt2img", json={"prompt": "x", "prompt_2": "y", "steps": 2})
    assert refused.status_code == 400 and "prompt_2" in refused.json()["detail"]


def test_sd3_engines_serve_with_the_models_defaults(preset_build) -> None:
    """SD 3 behind the same API: its prompts for each encoder and T5's length over /v1, and the
    A1111 routes with A1111's default sampler (Euler, flow matching's on this model) and a
    plain prompt; a prompt in A1111's syntax is one clear 400."""
    _, engines = preset_build("tiny-sd3")
    body = {"prompt": "a red fox", "prompt_3": "a red fox in the snow, photograph", "seed": 5,
            "max_sequence_length": 77, "skip_guidance_layers": [0], "steps": 3}  # fmt: skip
    with live_server(engines) as live, live.client() as client:
        response = client.post("/v1/txt2img", json=body)
        a1111 = client.post("/sdapi/v1/txt2img", json={"prompt": "a red fox", "steps": 3,
                                                       "seed": 5, "cfg_scale": 7})  # fmt: skip
        weighted = client.post("/sdapi/v1/txt2img", json={"prompt": "a (red:1.3) fox"})
    assert response.status_code == 200, response.text
    assert a1111.status_code == 200, a1111.text
    with Pipeline.load(engines) as pipe:
        direct = pipe(
            "a red fox",
            prompt_3="a red fox in the snow, photograph",
            max_sequence_length=77,
            skip_guidance_layers=[0],
            num_inference_steps=3,
            seed=5,
        ).images[0]
        plain = pipe("a red fox", num_inference_steps=3, seed=5).images[0]
    image = decode_png(response.json()["images"][0])
    assert "CFG scale: 7.0" in image.text["parameters"]  # SD 3's default guidance
    assert image.convert("RGB").tobytes() == direct.tobytes()  # type: ignore[union-attr]
    from_a1111 = decode_png(a1111.json()["images"][0]).convert("RGB")
    assert from_a1111.tobytes() == plain.tobytes()  # type: ignore[union-attr]
    assert weighted.status_code == 400
    assert "reads prompts as plain text" in weighted.json()["detail"]
