"""Ray Serve: a local two-replica cluster on the CPU engines spreads requests over both."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

ray = pytest.importorskip("ray", reason="Ray Serve is the `ray` extra: pip install 'sdtrt[ray]'")


@pytest.mark.slow  # starts a local Ray cluster: ~10-20 s and ~1 GB on two cores
def test_two_replicas_share_the_requests(tiny_engine_dir: Path) -> None:
    from ray import serve

    from sdtrt.serve.ray import build_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(tiny_engine_dir, num_replicas=2, queue=4), route_prefix="/")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            body = {"prompt": "spread", "steps": 3, "seed": 4}
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda _: client.post("/v1/txt2img", json=body), range(8)))
            refused = client.post("/v1/txt2img", json={"prompt": "x", "steps": 0})
            malformed = client.post("/v1/txt2img", json={"prompt": 3})
    finally:
        serve.shutdown()
        ray.shutdown()
    assert [answer.status_code for answer in answers] == [200] * 8
    assert len({answer.headers["X-Sdtrt-Replica"] for answer in answers}) == 2
    assert len({answer.json()["images"][0] for answer in answers}) == 1  # same seed, same bytes
    assert refused.status_code == 400 and "steps must be 1 to" in refused.json()["detail"]
    assert malformed.status_code == 422 and malformed.json()["detail"].startswith("prompt:")
