"""Refitting a TensorRT engine with new weights: LoRA switching without a rebuild.

An engine built with `--refittable` (BuilderFlag.REFIT: any new values, not REFIT_IDENTICAL,
which lets TensorRT assume the weights never change) keeps its weights addressable by the ONNX
initializer names it was parsed from. A switch loads the engine file afresh, so every weight
starts from the built values, and sets the initializers the LoRAs change: switching A -> B -> A
therefore leaves nothing of B behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from sdtrt.engine.tensorrt.logger import trt_logger
from sdtrt.errors import ArtifactError, BuildError

if TYPE_CHECKING:
    import tensorrt


def refit_cuda_engine(
    engine: tensorrt.ICudaEngine, weights: Mapping[str, np.ndarray], name: str
) -> None:
    """Give `engine` the named `weights` (in the dtype the graph holds them in), in place.
    Not while the engine runs: the caller switches between calls."""
    import tensorrt as trt

    if not engine.refittable:
        raise ArtifactError(
            f"the {name} engine was not built refittable; rebuild with "
            "`sdtrt build --backend tensorrt --refittable` to switch LoRAs"
        )
    refitter = trt.Refitter(engine, trt_logger())
    known = set(refitter.get_all_weights())
    missing = sorted(set(weights) - known)
    if missing:
        raise ArtifactError(
            f"the {name} engine has no refittable weight {missing[0]} (TensorRT folded it); "
            "merge this LoRA with `sdtrt build --lora` instead"
        )
    # TensorRT reads the arrays during refit_cuda_engine; they must live until it returns.
    held = {key: np.ascontiguousarray(value) for key, value in weights.items()}
    for key, value in held.items():
        if not refitter.set_named_weights(key, trt.Weights(value)):
            raise BuildError(f"TensorRT refused new values for {name} weight {key}")
    if refitter.get_missing_weights():
        raise BuildError(f"TensorRT wants more weights to refit {name}; rebuild the engines")
    if not refitter.refit_cuda_engine():
        raise BuildError(f"TensorRT could not refit the {name} engine; run with -v for its log")
