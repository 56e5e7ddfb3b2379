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
        app = build_app(tiny_engine_dir, num_replicas=2, queue=4, api_key="k")
        serve.run(app, route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=url, timeout=120) as stranger:
            keyless = stranger.post("/v1/txt2img", json={"prompt": "x", "steps": 2})
        key = {"Authorization": "Bearer k"}
        with httpx.Client(base_url=url, timeout=120, headers=key) as client:
            body = {"prompt": "spread", "steps": 3, "seed": 4}
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(lambda _: client.post("/v1/txt2img", json=body), range(8)))
            refused = client.post("/v1/txt2img", json={"prompt": "x", "steps": 0})
            malformed = client.post("/v1/txt2img", json={"prompt": 3})
            plain = client.post(
                "/v1/txt2img", content=b'{"prompt": "x"}', headers={"Content-Type": "text/plain"}
            )
            cross = client.post(
                "/v1/txt2img", json={"prompt": "x"}, headers={"Origin": "http://evil.example"}
            )
            long_prompt = client.post("/v1/txt2img", json={"prompt": "y" * 3000, "steps": 2})
    finally:
        serve.shutdown()
        ray.shutdown()
    assert [answer.status_code for answer in answers] == [200] * 8
    assert len({answer.headers["X-Sdtrt-Replica"] for answer in answers}) == 2
    assert len({answer.json()["images"][0] for answer in answers}) == 1  # same seed, same bytes
    assert refused.status_code == 400 and "steps must be 1 to" in refused.json()["detail"]
    assert malformed.status_code == 422 and malformed.json()["detail"].startswith("prompt:")
    # The guards of `sdtrt serve`, at Ray's ingress too.
    assert keyless.status_code == 401
    assert plain.status_code == 415 and cross.status_code == 403
    assert long_prompt.status_code == 400 and "characters" in long_prompt.json()["detail"]
