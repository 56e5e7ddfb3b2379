"""Bad requests over HTTP: each gets a 4xx whose detail is one line; the server stays healthy."""

from __future__ import annotations

import json

import pytest
from serving import LiveServer

GOOD = {"prompt": "a red fox", "steps": 2, "seed": 1}
V1 = "/v1/txt2img"
A1111 = "/sdapi/v1/txt2img"

# (name, method, path, body given as a dict or raw bytes, headers, status, words in the detail)
# fmt: off
CASES: list[tuple[str, str, str, object, dict[str, str], int, str]] = [
    ("prompt not a string", "POST", V1, {**GOOD, "prompt": 5}, {}, 422, "prompt"),
    ("prompt missing", "POST", V1, {"steps": 2}, {}, 422, "prompt: Field required"),
    ("steps as text", "POST", V1, {**GOOD, "steps": "20"}, {}, 422, "steps"),
    ("steps fractional", "POST", V1, {**GOOD, "steps": 20.5}, {}, 422, "steps"),
    ("steps boolean", "POST", V1, {**GOOD, "steps": True}, {}, 422, "steps"),
    ("steps zero", "POST", V1, {**GOOD, "steps": 0}, {}, 400, "steps must be 1 to"),
    ("steps a million", "POST", V1, {**GOOD, "steps": 10**6}, {}, 400, "steps must be 1 to"),
    ("height off the grid", "POST", V1, {**GOOD, "height": 33}, {}, 400, "multiple of"),
    ("height out of range", "POST", V1, {**GOOD, "height": 4096}, {}, 400, "built range"),
    ("width negative", "POST", V1, {**GOOD, "width": -64}, {}, 400, "width"),
    ("batch too big", "POST", V1, {**GOOD, "batch": 99}, {}, 400, "built maximum"),
    ("batch zero", "POST", V1, {**GOOD, "batch": 0}, {}, 400, "at least"),
    ("unknown scheduler", "POST", V1, {**GOOD, "scheduler": "magic"}, {}, 400, "unknown scheduler"),
    ("guidance as text", "POST", V1, {**GOOD, "guidance": "high"}, {}, 422, "guidance"),
    ("guidance NaN", "POST", V1, b'{"prompt": "x", "guidance": NaN}', {}, 400, "finite"),
    ("seed negative", "POST", V1, {**GOOD, "seed": -3}, {}, 400, "seed"),
    ("seed past 2**64", "POST", V1, {**GOOD, "seed": 2**70}, {}, 400, "seed"),
    ("seed string past 2**64", "POST", V1, {**GOOD, "seed": str(2**64)}, {}, 400, "seed"),
    ("seed as words", "POST", V1, {**GOOD, "seed": "lucky"}, {}, 422, "seed"),
    ("seed string negative", "POST", V1, {**GOOD, "seed": "-1"}, {}, 422, "seed"),
    ("seed string fractional", "POST", V1, {**GOOD, "seed": "1.5"}, {}, 422, "seed"),
    ("deadline negative", "POST", V1, {**GOOD, "deadline": -1}, {}, 400, "deadline"),
    ("unknown field", "POST", V1, {**GOOD, "sampler": "euler"}, {}, 422, "unknown field"),
    ("bad JSON", "POST", V1, b'{"prompt": ', {}, 422, "not valid JSON"),
    ("JSON array body", "POST", V1, b"[1, 2]", {}, 422, "JSON object"),
    ("not JSON at all", "POST", V1, b"hello", {"Content-Type": "text/plain"}, 415, "must be JSON"),
    ("huge body", "POST", V1, {**GOOD, "negative_prompt": "x" * 100_000}, {}, 413, "limit"),
    ("prompt too long", "POST", V1, {**GOOD, "prompt": "y" * 3000}, {}, 400, "characters"),
    ("A1111 unknown sampler", "POST", A1111, {"prompt": "x", "sampler_name": "Magic"}, {}, 400,
     "unknown sampler"),
    ("A1111 Karras on Euler", "POST", A1111,
     {"prompt": "x", "sampler_name": "Euler", "scheduler": "Karras"}, {}, 400, "Karras"),
    ("A1111 size off the grid", "POST", A1111, {"prompt": "x", "width": 63}, {}, 400, "multiple"),
    ("A1111 steps as words", "POST", A1111, {"prompt": "x", "steps": "many"}, {}, 422, "steps"),
    ("A1111 too many images", "POST", A1111, {"prompt": "x", "batch_size": 8, "n_iter": 8}, {},
     400, "batch_size x n_iter"),
    ("A1111 other checkpoint", "POST", "/sdapi/v1/options",
     {"sd_model_checkpoint": "sdxl.safetensors"}, {}, 400, "unknown model 'sdxl.safetensors'"),
    ("unknown job", "GET", "/v1/jobs/0123", None, {}, 404, "no job"),
    ("unknown route", "GET", "/v2/everything", None, {}, 404, "Not Found"),
    ("wrong method", "PUT", V1, GOOD, {}, 405, "Method Not Allowed"),
]
# fmt: on


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status", "words"),
    [pytest.param(*case[1:], id=case[0]) for case in CASES],
)
def test_bad_request_gets_one_line(
    server: LiveServer,
    method: str,
    path: str,
    body: object,
    headers: dict[str, str],
    status: int,
    words: str,
) -> None:
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **headers}
    with server.client() as client:
        response = client.request(method, path, content=content, headers=headers)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail
    assert words in detail, detail
    assert len(detail) < 400


def test_server_healthy_after_the_matrix(server: LiveServer) -> None:
    assert len(CASES) >= 20
    with server.client() as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        assert client.post(V1, json=GOOD).status_code == 200
