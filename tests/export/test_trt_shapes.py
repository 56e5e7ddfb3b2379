"""TensorRT's host-side shape decisions on every network's real shapes, tiny and SD 1.5.

The networks are built on torch's meta device (real modules and configs, no weights, no
compute), so their forward pass gives each output's true shape: what a TensorRT execution
context reports once the input shapes are set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sdtrt.engine.options import BuildOptions
from sdtrt.engine.ranges import check_batch, check_image_size, resolve_ranges
from sdtrt.engine.tensorrt.host import profile_shapes
from sdtrt.engine.tensorrt.io import check_engine_io, output_shapes
from sdtrt.engine.tensors import check_feeds
from sdtrt.errors import ArtifactError
from sdtrt.export.clip_vocab import END, START, vocab_from_merges
from sdtrt.export.presets import get_preset
from sdtrt.export.specs import (
    ComponentSpec,
    TextEncoderSpec,
    UNetSpec,
    VaeDecoderSpec,
    VaeEncoderSpec,
)

NETWORKS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")


class Model:
    """A preset's four networks on the meta device, and its native size and VAE factor."""

    def __init__(self, name: str) -> None:
        from accelerate import init_empty_weights
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextConfig, CLIPTextModel

        preset = get_preset(name)
        vocab = vocab_from_merges(preset.merges())
        with init_empty_weights(include_buffers=True):
            unet = UNet2DConditionModel(**preset.unet)
            vae = AutoencoderKL(**preset.vae)
            text = CLIPTextModel(
                CLIPTextConfig(
                    vocab_size=len(vocab),
                    bos_token_id=vocab[START],
                    eos_token_id=vocab[END],
                    **preset.text_encoder,
                )
            )
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        native = int(unet.config.sample_size) * self.factor
        self.native = (native, native)
        length = int(text.config.max_position_embeddings)
        self.specs: dict[str, ComponentSpec] = {
            "text_encoder": TextEncoderSpec(text, length),
            "unet": UNetSpec(unet, self.factor, length),
            "vae_decoder": VaeDecoderSpec(vae, self.factor),
            "vae_encoder": VaeEncoderSpec(vae, self.factor),
        }

    def true_outputs(self, network: str, feeds: dict[str, np.ndarray]) -> dict[str, tuple]:
        """Each output's shape, from the network's own forward pass on the meta device."""
        spec = self.specs[network]
        meta = [
            torch.empty(feeds[t.name].shape, dtype=getattr(torch, t.dtype), device="meta")
            for t in spec.inputs
        ]
        with torch.no_grad():
            result = spec.module()(*meta)
        tensors = result if isinstance(result, tuple | list) else (result,)
        return {t.name: tuple(r.shape) for t, r in zip(spec.outputs, tensors, strict=True)}


@pytest.fixture(scope="module", params=["tiny", "sd15"])
def model(request: pytest.FixtureRequest) -> Model:
    return Model(request.param)


def _corners(spec: ComponentSpec, ranges) -> list[dict[str, int]]:
    """The smallest, optimal and largest point of each dim, plus a mixed one."""
    dims = spec.dims(ranges)
    points = [{s: v[i] for s, v in dims.items()} for i in range(3)]
    points.append({s: v[(i % 2) * 2] for i, (s, v) in enumerate(dims.items())})
    return points


@pytest.mark.parametrize("network", NETWORKS)
def test_output_shapes_from_the_context_hold_across_the_range(model, network):
    # The VAE decoder's image size and the encoder's latent size appear in no input: only the
    # execution context can say them. The check accepts the true shapes everywhere.
    ranges = resolve_ranges(BuildOptions(max_batch=4), model.native, model.factor)
    spec = model.specs[network]
    io = spec.io(ranges)
    rng = np.random.default_rng(0)
    for point in _corners(spec, ranges):
        feeds = spec.sample_inputs(point, rng)
        check_feeds(network, io, feeds)
        shapes = {name: tuple(a.shape) for name, a in feeds.items()}
        truth = model.true_outputs(network, feeds)
        assert output_shapes(network, io, shapes, truth) == truth


@pytest.mark.parametrize("network", NETWORKS)
def test_wrong_or_unknown_output_shapes_are_refused(model, network):
    ranges = resolve_ranges(BuildOptions(max_batch=2), model.native, model.factor)
    spec = model.specs[network]
    io = spec.io(ranges)
    feeds = spec.sample_inputs(spec.opt_point(ranges), np.random.default_rng(1))
    shapes = {name: tuple(a.shape) for name, a in feeds.items()}
    truth = model.true_outputs(network, feeds)
    name, shape = next(iter(truth.items()))
    unknown = {**truth, name: (shape[0], -1, *shape[2:])}
    with pytest.raises(ArtifactError, match=f"output '{name}' as .* could not work out"):
        output_shapes(network, io, shapes, unknown)
    other_batch = {**truth, name: (shape[0] + 1, *shape[1:])}
    with pytest.raises(ArtifactError, match="'batch' is"):
        output_shapes(network, io, shapes, other_batch)
    with pytest.raises(ArtifactError, match="dims"):
        output_shapes(network, io, shapes, {**truth, name: shape[:-1]})


@pytest.mark.parametrize("network", NETWORKS)
def test_engine_io_is_checked_against_the_spec(model, network):
    ranges = resolve_ranges(BuildOptions(), model.native, model.factor)
    io = model.specs[network].io(ranges)
    tensors = [(t.name, "input", t.dtype) for t in io.inputs]
    tensors += [(t.name, "output", t.dtype) for t in io.outputs]
    check_engine_io(io, tensors, Path("engine.plan"))
    first, *rest = tensors
    with pytest.raises(ArtifactError, match=f"it has no input '{first[0]}'"):
        check_engine_io(io, rest, Path("engine.plan"))
    half = [(first[0], first[1], "float16"), *rest]
    with pytest.raises(ArtifactError, match=f"input '{first[0]}' is float16 where the spec"):
        check_engine_io(io, half, Path("engine.plan"))
    swapped = [(n, "output" if m == "input" else "input", d) for n, m, d in tensors]
    with pytest.raises(ArtifactError, match="is an output where the spec has an input"):
        check_engine_io(io, swapped, Path("engine.plan"))


@pytest.mark.parametrize("network", NETWORKS)
def test_static_builds_fix_the_size_and_take_any_batch(model, network):
    # --static fixes the image size only: 1..max images, guided (two rows per image for the
    # text encoder and UNet) or not, all fit the engines' profile.
    max_batch = 3
    options = BuildOptions(static=True, max_batch=max_batch)
    ranges = resolve_ranges(options, model.native, model.factor)
    spec = model.specs[network]
    io = spec.io(ranges)
    profile = {name: (low, high) for name, low, _, high in profile_shapes(io)}
    rows_per_image = (1, 2) if network in ("text_encoder", "unet") else (1,)
    height, width = ranges.size.opt
    check_image_size(ranges, height, width)
    rng = np.random.default_rng(2)
    for images in range(1, max_batch + 1):
        check_batch(ranges, images)
        for rows in rows_per_image:
            point = {**spec.opt_point(ranges), "batch": rows * images}
            feeds = spec.sample_inputs(point, rng)
            check_feeds(network, io, feeds)
            for name, array in feeds.items():
                low, high = profile[name]
                assert all(a <= s <= b for a, s, b in zip(low, array.shape, high, strict=True))
    image_dims = [
        (lo, hi)
        for t in io.inputs
        for d, lo, hi in _named_dims(io, t.name)
        if d in ("latent_height", "latent_width", "height", "width")
    ]
    if network != "text_encoder":  # the one network without image-sized inputs
        assert image_dims and all(lo == hi for lo, hi in image_dims)


def _named_dims(io, name):
    spec = io.input(name)
    shape_range = io.profile.get(name)
    if shape_range is None:
        return []
    return [
        (d, lo, hi)
        for d, lo, hi in zip(spec.shape, shape_range.min, shape_range.max, strict=True)
        if isinstance(d, str)
    ]
