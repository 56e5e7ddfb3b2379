"""Where one pipeline call's time goes, stage by stage."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Timings:
    """Seconds spent per stage of one call."""

    tokenize: float = 0.0
    text_encoder: float = 0.0
    unet: list[float] = field(default_factory=list)  # one entry per model call
    controlnet: list[float] = field(default_factory=list)  # the ControlNets', per step
    scheduler: list[float] = field(default_factory=list)  # guidance + scheduler step, per call
    vae_decoder: float = 0.0
    image_encode: float = 0.0  # preparing and VAE-encoding the input image and mask
    total: float = 0.0
