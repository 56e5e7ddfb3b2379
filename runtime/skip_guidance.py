"""Skip-layer guidance, SD 3.5 Medium's recommended setting (diffusers' `skip_guidance_layers`):
for the steps between `start` and `stop` of the schedule, the prompts' rows also run with some of
the transformer's layers skipped, and the guided prediction moves away from that one:
prediction += scale x (conditional - skipped). The transformer takes which layers run as an
input (`layer_mask`), so one engine serves calls with and without."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from sdtrt.engine.base import Engine
from sdtrt.errors import InputError

LAYER_MASK = "layer_mask"  # the transformer's input: 1 runs a layer, 0 skips it


@dataclass(frozen=True)
class SkipLayers:
    """The layers to skip and when, with diffusers' names and defaults."""

    layers: tuple[int, ...]
    scale: float = 2.8  # skip_layer_guidance_scale
    start: float = 0.01  # skip_layer_guidance_start, a fraction of the steps
    stop: float = 0.2  # skip_layer_guidance_stop

    def check(self, layers: int | None) -> None:
        """One InputError for layers a transformer of `layers` (None: without the input) lacks."""
        if layers is None:
            raise InputError(
                "skip-layer guidance is for SD 3 models built by this sdtrt; rebuild the engines"
            )
        if not self.layers or any(
            isinstance(n, bool) or not isinstance(n, int) or not 0 <= n < layers
            for n in self.layers
        ):
            raise InputError(
                f"skip_guidance_layers must name layers 0 to {layers - 1} of this transformer, "
                f"got {list(self.layers)}"
            )
        for name, value in (("scale", self.scale), ("start", self.start), ("stop", self.stop)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(f"skip_layer_guidance_{name} must be a number, got {value!r}")


def skip_layers(
    layers: Sequence[int] | None,
    scale: float = SkipLayers.scale,
    start: float = SkipLayers.start,
    stop: float = SkipLayers.stop,
) -> SkipLayers | None:
    """diffusers' arguments as SkipLayers; None without layers to skip."""
    if layers is None:
        return None
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Sequence):
        raise InputError(f"skip_guidance_layers must be a list of layer numbers, got {layers!r}")
    return SkipLayers(tuple(layers), scale, start, stop)


class SkipLayerGuidance:
    """The extra transformer call of a guided request's steps, on its prompts' rows."""

    def __init__(
        self, skip: SkipLayers, conditioning: Mapping[str, np.ndarray], rows: int, steps: int
    ) -> None:
        """`conditioning`: the loop's guided feeds (unconditional rows, then `rows` of the
        prompts); `steps`: the schedule's, which `start` and `stop` are fractions of."""
        self.skip = skip
        self.steps = steps
        self.feeds = {name: value[-rows:] for name, value in conditioning.items()}
        mask = np.ones_like(conditioning[LAYER_MASK])
        mask[list(skip.layers)] = 0
        self.feeds[LAYER_MASK] = mask

    def active(self, step: int) -> bool:
        return self.steps * self.skip.start < step < self.steps * self.skip.stop

    def apply(
        self,
        denoiser: Engine,
        prediction: np.ndarray,
        conditional: np.ndarray,
        sample: np.ndarray,
        timestep: np.ndarray,
    ) -> np.ndarray:
        """`prediction` (guided, updated in place) moved away from the skipped layers'."""
        rows = conditional.shape[0]
        feeds = {**self.feeds, "sample": sample[-rows:], "timestep": timestep[-rows:]}
        skipped = denoiser.infer(feeds)["noise_pred"]
        prediction += (conditional - skipped) * np.float32(self.skip.scale)
        return prediction
