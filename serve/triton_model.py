"""Triton Inference Server Python-backend model over sdtrt engines (copied as `1/model.py`).

Unlike a model that fixes steps, guidance, seed and size in its configuration, every request
carries them as optional inputs; each Triton instance (a process of its own) loads its own
pipeline. Runs inside Triton, where `triton_python_backend_utils` exists and sdtrt is installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

from sdtrt.errors import InputError, SdtrtError
from sdtrt.runtime.pipeline import Pipeline


def _value(request: Any, name: str, default: Any) -> Any:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    values = tensor.as_numpy().reshape(-1)
    if values.size != 1:
        raise InputError(f"{name} must hold exactly one value, got {values.size}")
    value = values[0]
    return value.decode("utf-8") if isinstance(value, bytes) else value.item()


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        parameters = {
            key: value["string_value"] for key, value in config.get("parameters", {}).items()
        }
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.max_steps = int(parameters.get("max_steps", "150"))
        self.max_prompt_chars = int(parameters.get("max_prompt_chars", "2000"))
        self.max_images = int(parameters.get("max_images", "16"))
        self.pipe = Pipeline.load(version_dir / parameters.get("engine_dir", "engines"))

    def _generate(self, request: Any) -> list[Any]:
        steps = int(_value(request, "STEPS", 50))
        if not 1 <= steps <= self.max_steps:
            raise InputError(f"STEPS must be 1 to {self.max_steps}, got {steps}")
        prompt, negative = _value(request, "PROMPT", None), _value(request, "NEGATIVE_PROMPT", "")
        for name, text in (("PROMPT", prompt), ("NEGATIVE_PROMPT", negative)):
            if isinstance(text, str) and len(text) > self.max_prompt_chars:
                raise InputError(
                    f"{name} is {len(text)} characters; the limit is {self.max_prompt_chars}"
                )
        batch = int(_value(request, "BATCH", 1))
        if not 1 <= batch <= self.max_images:
            raise InputError(f"BATCH must be 1 to {self.max_images}, got {batch}")
        seed = _value(request, "SEED", -1)
        guidance = _value(request, "GUIDANCE", None)  # the model's default if absent
        result = self.pipe(
            prompt,
            negative_prompt=negative or None,
            num_inference_steps=steps,
            guidance_scale=None if guidance is None else float(guidance),
            seed=None if seed < 0 else int(seed),
            height=_value(request, "HEIGHT", None),
            width=_value(request, "WIDTH", None),
            scheduler=_value(request, "SCHEDULER", "") or None,
            num_images_per_prompt=batch,
        )
        pixels = np.stack([np.asarray(image) for image in result.images])
        seed_used = np.array([result.request.seed], dtype=np.uint64)
        return [pb_utils.Tensor("IMAGES", pixels), pb_utils.Tensor("SEED_USED", seed_used)]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            try:
                outputs = self._generate(request)
                responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            except (SdtrtError, ValueError, TypeError) as error:
                failure = pb_utils.TritonError(str(error).splitlines()[0])
                responses.append(pb_utils.InferenceResponse(output_tensors=[], error=failure))
        return responses

    def finalize(self) -> None:
        self.pipe.close()
