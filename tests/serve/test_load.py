"""A bounded load test over HTTP, memory over many requests, and the service's own overhead."""

from __future__ import annotations

import statistics
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
from serving import LiveServer, live_server

from sdtrt.serve import GenerationParams, Service
from sdtrt.serve.overhead import measure_overhead
from sdtrt.tolerances import SERVE_RSS_GROWTH_MIB

SEEDS = (101, 202)


def _request(seed: int) -> dict[str, object]:
    return {"prompt": "load", "steps": 3, "seed": seed}


def test_four_times_capacity_all_answered_same_seed_same_bytes(tiny_engine_dir: Path) -> None:
    with live_server(tiny_engine_dir, workers=2, queue=4) as live:
        with live.client(limits=httpx.Limits(max_connections=64)) as client:
            references = {
                seed: client.post("/v1/txt2img", json=_request(seed)).json()["images"][0]
                for seed in SEEDS
            }
            victim = client.post(
                "/v1/txt2img?wait=false", json={"prompt": "victim", "steps": 150, "seed": 9}
            ).json()["id"]
            count = 4 * live.service.queue_size
            started = time.perf_counter()
            with ThreadPoolExecutor(count) as pool:
                futures = [
                    pool.submit(client.post, "/v1/txt2img", json=_request(SEEDS[i % 2]))
                    for i in range(count)
                ]
                time.sleep(0.1)
                assert client.delete(f"/v1/jobs/{victim}").status_code == 202
                answers = [(i, future.result()) for i, future in enumerate(futures)]
            elapsed = time.perf_counter() - started
            victim_state = client.get(f"/v1/jobs/{victim}").json()["state"]
            healthy = client.get("/healthz").status_code
    statuses = Counter(answer.status_code for _, answer in answers)
    print(f"\nload: {count} concurrent requests on 2 workers, queue 4: {dict(statuses)} "
          f"in {elapsed:.2f} s")  # fmt: skip
    assert set(statuses) <= {200, 429} and statuses[200] >= 1
    for i, answer in answers:
        if answer.status_code == 200:
            assert answer.json()["images"][0] == references[SEEDS[i % 2]]
        else:
            assert int(answer.headers["Retry-After"]) >= 1
    assert victim_state == "cancelled" and healthy == 200


def _rss_growth_mib(live: LiveServer, requests: int) -> tuple[float, float]:
    process = psutil.Process()
    small = {"prompt": "memory", "steps": 1, "height": 32, "width": 32}
    with live.client() as client:

        def run(n: int) -> list[float]:
            times = []
            for i in range(n):
                started = time.perf_counter()
                answer = client.post("/v1/txt2img", json={**small, "seed": i})
                assert answer.status_code == 200
                times.append(time.perf_counter() - started)
            return times

        run(20)  # fills the job history (8 here) and settles the allocators
        before = process.memory_info().rss
        times = run(requests)
        after = process.memory_info().rss
    return (after - before) / 2**20, 1000 * statistics.median(times)


def test_rss_flat_over_200_requests(tiny_engine_dir: Path) -> None:
    with live_server(tiny_engine_dir, history=8) as live:
        growth, median_ms = _rss_growth_mib(live, 200)
    print(f"\nRSS growth over 200 requests: {growth:.1f} MiB (median latency {median_ms:.1f} ms)")
    assert growth < SERVE_RSS_GROWTH_MIB


def test_service_overhead_bench(tiny_engine_dir: Path) -> None:
    """Prints what the service adds around a pipeline call; the figure is reported, not asserted."""
    service = Service(tiny_engine_dir, workers=1, queue_size=4)
    service.start()
    service.wait_ready(60)
    try:
        params = GenerationParams(prompt="bench", steps=1, seed=1, height=32, width=32)
        overhead = measure_overhead(service, params, 40)
    finally:
        service.shutdown(10)
    print("\n" + overhead.describe())
    assert overhead.runs == 40 and overhead.median_pipeline_ms > 0


@pytest.mark.slow  # 240 requests on two models: ~50 s on two cores
def test_mixed_tasks_over_two_models(tiny_engine_dir: Path, tmp_path: Path) -> None:
    """Text to image, image to image and inpainting over /v1 and the A1111 API, on two models
    at once, eight clients at a time: only 200 or 429, each task's bytes the same every time,
    and memory flat over 200 requests."""
    import base64
    import io
    import shutil

    import numpy as np
    from PIL import Image

    shutil.copytree(tiny_engine_dir, tmp_path / "second")
    buffer = io.BytesIO()
    y, x = np.mgrid[0:64, 0:64]
    Image.fromarray(np.stack([x * 4, y * 4, x + y], -1).astype(np.uint8)).save(buffer, "PNG")
    image = base64.b64encode(buffer.getvalue()).decode()
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    buffer = io.BytesIO()
    Image.fromarray(mask).save(buffer, "PNG")
    masked = base64.b64encode(buffer.getvalue()).decode()
    base = {"prompt": "mixed", "steps": 2, "seed": 3, "height": 32, "width": 32}
    tasks = [
        ("/v1/txt2img", base),
        ("/v1/txt2img", {**base, "model": "second"}),
        ("/v1/img2img", {**base, "height": 64, "width": 64, "image": image, "strength": 0.7}),
        ("/v1/img2img", {**base, "model": "second", "image": image, "mask": masked}),
        ("/sdapi/v1/txt2img", {**base, "override_settings": {"sd_model_checkpoint": "second"}}),
    ]
    process = psutil.Process()
    with live_server(tiny_engine_dir, more_models=[tmp_path / "second"], history=8) as live:
        with live.client(limits=httpx.Limits(max_connections=16)) as client:
            references = [client.post(path, json=body).json()["images"][0] for path, body in tasks]

            def send(i: int) -> tuple[int, httpx.Response]:
                path, body = tasks[i % len(tasks)]
                return i, client.post(path, json=body)

            with ThreadPoolExecutor(8) as pool:
                list(pool.map(send, range(40)))  # settles the allocators and the history
                before = process.memory_info().rss
                answers = list(pool.map(send, range(200)))
                after = process.memory_info().rss
    statuses = Counter(answer.status_code for _, answer in answers)
    growth = (after - before) / 2**20
    print(f"\nmixed load, 2 models: {dict(statuses)}, RSS growth {growth:.1f} MiB")
    assert set(statuses) <= {200, 429} and statuses[200] >= len(tasks)
    for i, answer in answers:
        if answer.status_code == 200:
            assert answer.json()["images"][0] == references[i % len(tasks)], tasks[i % 5][0]
    assert growth < SERVE_RSS_GROWTH_MIB
