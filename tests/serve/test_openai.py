"""OpenAI's images API, driven by the unchanged `openai` Python client."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serving import LiveServer, live_server

from sdtrt.runtime.pipeline import Pipeline
from sdtrt.serve.app import ServeOptions

openai = pytest.importorskip("openai", reason="the dev extra installs OpenAI's client")


def _client(server: LiveServer, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0, timeout=60)


def test_images_generate_matches_the_pipeline(server: LiveServer, tiny_engine_dir: Path) -> None:
    answer = _client(server).images.generate(
        model="tiny",
        prompt="a red fox in the snow",
        n=2,
        size="64x48",
        response_format="b64_json",
        quality="high",  # OpenAI's own: accepted and ignored
        extra_body={"steps": 3, "seed": 11, "negative_prompt": "blurry"},
    )
    assert answer.data is not None and len(answer.data) == 2 and answer.size == "64x48"
    images = [Image.open(io.BytesIO(base64.b64decode(item.b64_json or ""))) for item in answer.data]
    with Pipeline.load(tiny_engine_dir) as pipe:
        direct = pipe(
            "a red fox in the snow",
            negative_prompt="blurry",
            num_inference_steps=3,
            seed=11,
            num_images_per_prompt=2,
            height=48,
            width=64,
        )
    for image, expected in zip(images, direct.images, strict=True):
        np.testing.assert_array_equal(np.asarray(image.convert("RGB")), np.asarray(expected))


@pytest.mark.parametrize(
    ("arguments", "words"),
    [
        ({"size": "65x65"}, "multiple of"),
        ({"size": "big"}, "WIDTHxHEIGHT"),
        ({"model": "dall-e-3"}, "unknown model 'dall-e-3'; this server has: tiny"),
        ({"response_format": "url"}, "b64_json"),
        ({"n": 99}, "n must be 1 to 16"),
        ({"extra_body": {"stepz": 3}}, "stepz"),
    ],
)
def test_refusals_are_openai_errors_in_one_line(
    server: LiveServer, arguments: dict[str, object], words: str
) -> None:
    with pytest.raises(openai.BadRequestError) as error:
        _client(server).images.generate(prompt="a fox", **arguments)  # type: ignore[arg-type]
    message = error.value.body["message"]  # type: ignore[index]
    assert words in message and "\n" not in message


def test_the_api_key_is_openais_bearer_key(tiny_engine_dir: Path) -> None:
    with live_server(tiny_engine_dir, ServeOptions(api_key="s3cret")) as live:
        with pytest.raises(openai.AuthenticationError):
            _client(live, "guess").images.generate(prompt="a fox", extra_body={"steps": 2})
        answer = _client(live, "s3cret").images.generate(prompt="a fox", extra_body={"steps": 2})
        assert answer.data is not None and len(answer.data) == 1
