"""A preset as sdtrt engines beside diffusers' pipeline for it, and the images the family parity
tests feed both (importable as `reference_pair`, see pythonpath in pyproject.toml)."""

from __future__ import annotations

import diffusers
import numpy as np
import torch
from helpers import assert_same_image, using_scheduler
from PIL import Image

from sdtrt.runtime.pipeline import Pipeline


def an_image(height=64, width=64):
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    pixels = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 5 + y / 7)], axis=-1)
    return Image.fromarray((pixels * 255).round().astype(np.uint8))


def a_mask(height=64, width=64):
    mask = np.zeros((height, width), np.uint8)
    mask[height // 5 : height * 3 // 4, width // 4 : width * 4 // 5] = 255
    return Image.fromarray(mask)


class Pair:
    """A preset as sdtrt engines and as one of diffusers' pipeline classes, called alike."""

    def __init__(self, preset_build, preset, reference_class):
        self._load(*preset_build(preset), reference_class)

    @classmethod
    def from_folders(cls, folder, engines, reference_class, **loading):
        """Engines built elsewhere, and diffusers' pipeline loaded with `loading` (modules to
        replace, None for one to drop)."""
        pair = cls.__new__(cls)
        pair._load(folder, engines, reference_class, **loading)
        return pair

    def _load(self, folder, engines, reference_class, **loading):
        self.pipe = Pipeline.load(engines)
        self.reference = getattr(diffusers, reference_class).from_pretrained(folder, **loading)
        self.reference.set_progress_bar_config(disable=True)

    def expected(self, scheduler=None, seed=0, **kwargs):
        if isinstance(kwargs.get("latents"), np.ndarray):
            kwargs["latents"] = torch.from_numpy(kwargs["latents"])
        if isinstance(kwargs.get("image"), np.ndarray):
            kwargs["image"] = torch.from_numpy(kwargs["image"])
        with using_scheduler(self.reference, scheduler):
            generator = torch.Generator("cpu").manual_seed(seed)
            return self.reference(**kwargs, generator=generator, output_type="np").images

    def actual(self, scheduler=None, seed=0, **kwargs):
        return self.pipe(**kwargs, scheduler=scheduler, seed=seed, output_type="np").images

    def check(self, scheduler=None, seed=0, **kwargs):
        assert_same_image(
            self.expected(scheduler, seed, **kwargs), self.actual(scheduler, seed, **kwargs)
        )
