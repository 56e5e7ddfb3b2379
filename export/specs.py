"""One spec per network: ONNX names, dynamic dims, profiles, sample inputs and the torch wrapper.

A spec states its tensors with symbolic dims ("batch", "latent_height", ...). `dims` turns the
user's build ranges into (min, opt, max) sizes for each symbol; the profile, the ONNX dynamic
axes, the export and validation inputs all derive from that single table.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from sdtrt.engine.ranges import BuildRanges
from sdtrt.engine.tensors import ComponentIO, ShapeRange, TensorSpec
from sdtrt.runtime.guidance import guidance_embedding

DimRanges = dict[str, tuple[int, int, int]]  # symbol -> (min, opt, max)
Point = dict[str, int]  # symbol -> size


def _batch_dims(ranges: BuildRanges, rows_per_image: int) -> tuple[int, int, int]:
    """(min, opt, max) rows for networks that see `rows_per_image` rows per image. The batch
    stays dynamic under --static (which fixes the image size): unguided calls and fewer images
    need fewer rows; the static build is tuned for its full batch."""
    most = rows_per_image * ranges.max_batch
    if ranges.fixed_shapes:
        return (most, most, most)
    return (1, most if ranges.static else rows_per_image, most)


def _text_dims(ranges: BuildRanges, max_length: int) -> tuple[int, int, int]:
    """(min, opt, max) text states the UNet attends to: whole text-encoder outputs, one per
    prompt chunk (long prompts in the A1111 syntax), optimised for one."""
    return (max_length, max_length, max_length * ranges.max_prompt_chunks)


def _latent_dims(ranges: BuildRanges, vae_scale_factor: int) -> DimRanges:
    (h0, w0), (h1, w1), (h2, w2) = ranges.size.min, ranges.size.opt, ranges.size.max
    f = vae_scale_factor
    return {
        "latent_height": (h0 // f, h1 // f, h2 // f),
        "latent_width": (w0 // f, w1 // f, w2 // f),
    }


class ComponentSpec(ABC):
    """A network to export. Subclasses name their tensors and wrap the torch module."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @abstractmethod
    def dims(self, ranges: BuildRanges) -> DimRanges:
        """(min, opt, max) for every symbolic dim of this network, from the build ranges."""

    @abstractmethod
    def module(self) -> torch.nn.Module:
        """A module taking the inputs positionally, in order, and returning the outputs in order."""

    @abstractmethod
    def sample_inputs(self, point: Point, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Realistic inputs at `point`, for tracing and for validation against torch."""

    def opt_point(self, ranges: BuildRanges) -> Point:
        return {symbol: opt for symbol, (_, opt, _) in self.dims(ranges).items()}

    def trace_point(self, ranges: BuildRanges) -> Point:
        """The sizes to trace the export at; the optimal ones unless the network needs otherwise."""
        return self.opt_point(ranges)

    def io(self, ranges: BuildRanges) -> ComponentIO:
        dims = self.dims(ranges)

        def shape(spec: TensorSpec, which: int) -> tuple[int, ...]:
            return tuple(d if isinstance(d, int) else dims[d][which] for d in spec.shape)

        profile = {
            t.name: ShapeRange(min=shape(t, 0), opt=shape(t, 1), max=shape(t, 2))
            for t in self.inputs
            if any(isinstance(d, str) for d in t.shape)
        }
        return ComponentIO(inputs=self.inputs, outputs=self.outputs, profile=profile)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {
            t.name: {axis: d for axis, d in enumerate(t.shape) if isinstance(d, str)}
            for t in (*self.inputs, *self.outputs)
        }


class _Wrapper(torch.nn.Module):
    """Adapts a diffusers/transformers module to positional tensors in, tensors out."""

    def __init__(self, inner: torch.nn.Module, call: Any) -> None:
        super().__init__()
        self.inner = inner
        self._call = call

    def forward(self, *args: torch.Tensor) -> Any:
        return self._call(self.inner, *args)


def _text_states(model: Any, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The last hidden state, and the final layer norm of every earlier one (clip skip)."""
    last, _, hidden = model(ids.to(torch.int64), output_hidden_states=True, return_dict=False)
    # transformers 5 flattened CLIPTextModel; earlier versions nest it in `text_model`.
    norm = getattr(model, "text_model", model).final_layer_norm
    return last, torch.stack([norm(h) for h in hidden[:-1]], dim=1)


class TextEncoderSpec(ComponentSpec):
    """CLIP text encoder: token ids to the per-token hidden states the UNet attends to.

    `layer_states[:, k]` is the input of encoder layer k (k = 0: the embeddings) through the final
    layer norm: diffusers' `clip_skip=n` is `layer_states[:, layers - n]`. All of them, not one
    chosen at build time, so that clip skip is a runtime choice; the extra cost is a layer norm
    per layer and the copy of the output (12 x 77 x 768 floats per prompt on SD 1.x).
    """

    name = "text_encoder"

    def __init__(self, text_encoder: Any, max_length: int) -> None:
        self.text_encoder = text_encoder
        self.vocab_size = int(text_encoder.config.vocab_size)
        hidden = int(text_encoder.config.hidden_size)
        layers = int(text_encoder.config.num_hidden_layers)
        self.inputs = (TensorSpec(name="input_ids", dtype="int32", shape=("batch", max_length)),)
        self.outputs = (
            TensorSpec(
                name="last_hidden_state", dtype="float32", shape=("batch", max_length, hidden)
            ),
            TensorSpec(
                name="layer_states", dtype="float32", shape=("batch", layers, max_length, hidden)
            ),
        )

    def dims(self, ranges: BuildRanges) -> DimRanges:
        # Prompts and negative prompts are encoded in one call, hence twice the images.
        return {"batch": _batch_dims(ranges, 2)}

    def module(self) -> torch.nn.Module:
        return _Wrapper(self.text_encoder, _text_states)

    def sample_inputs(self, point: Point, rng: np.random.Generator) -> dict[str, np.ndarray]:
        length = int(self.inputs[0].shape[1])
        ids = rng.integers(0, self.vocab_size, size=(point["batch"], length), dtype=np.int32)
        return {"input_ids": ids}


def _xl_text_states(model: Any, ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The input of every encoder layer, and the projected pooled output where there is one."""
    out = model(ids.to(torch.int64), output_hidden_states=True, return_dict=True)
    states = torch.stack(out.hidden_states[:-1], dim=1)
    pooled = getattr(out, "text_embeds", None)
    return (states,) if pooled is None else (states, pooled)


class XLTextEncoderSpec(ComponentSpec):
    """An SDXL text encoder: token ids to the input of each of its layers, not normalised
    (SDXL's UNet attends to the penultimate one, `hidden_states[:, layers - 1]`; clip skip n
    to `layers - 1 - n`), and for the second encoder the projected pooled output too."""

    def __init__(self, name: str, text_encoder: Any, max_length: int) -> None:
        self.name = name
        self.text_encoder = text_encoder
        config = text_encoder.config
        self.vocab_size = int(config.vocab_size)
        hidden, layers = int(config.hidden_size), int(config.num_hidden_layers)
        self.inputs = (TensorSpec(name="input_ids", dtype="int32", shape=("batch", max_length)),)
        states = TensorSpec(
            name="hidden_states", dtype="float32", shape=("batch", layers, max_length, hidden)
        )
        self.outputs: tuple[TensorSpec, ...] = (states,)
        if hasattr(text_encoder, "text_projection"):  # CLIPTextModelWithProjection
            pooled = ("batch", int(config.projection_dim))
            self.outputs += (TensorSpec(name="text_embeds", dtype="float32", shape=pooled),)

    def dims(self, ranges: BuildRanges) -> DimRanges:
        return {"batch": _batch_dims(ranges, 2)}

    def module(self) -> torch.nn.Module:
        return _Wrapper(self.text_encoder, _xl_text_states)

    def sample_inputs(self, point: Point, rng: np.random.Generator) -> dict[str, np.ndarray]:
        length = int(self.inputs[0].shape[1])
        ids = rng.integers(0, self.vocab_size, size=(point["batch"], length), dtype=np.int32)
        return {"input_ids": ids}


class UNetSpec(ComponentSpec):
    """The denoising UNet: noisy latents, timestep and text states to the model's prediction.

    SDXL's UNet also takes the pooled prompt (`text_embeds`) and its size numbers (`time_ids`);
    a latent consistency model's takes the guidance scale's embedding (`timestep_cond`)."""

    name = "unet"

    def __init__(
        self,
        unet: Any,
        vae_scale_factor: int,
        max_length: int,
        pooled_dim: int | None = None,
        time_ids: int | None = None,
    ) -> None:
        self.unet = unet
        self.vae_scale_factor = vae_scale_factor
        self.max_length = max_length
        config = unet.config
        self.down_factor = 2 ** (len(config.block_out_channels) - 1)
        channels, context = int(config.in_channels), int(config.cross_attention_dim)
        latent = ("batch", channels, "latent_height", "latent_width")
        extra = []
        if pooled_dim is not None and time_ids is not None:
            extra += [
                TensorSpec(name="text_embeds", dtype="float32", shape=("batch", pooled_dim)),
                TensorSpec(name="time_ids", dtype="float32", shape=("batch", time_ids)),
            ]
        self.guidance_embedding_dim = getattr(config, "time_cond_proj_dim", None)
        if self.guidance_embedding_dim is not None:
            shape = ("batch", int(self.guidance_embedding_dim))
            extra.append(TensorSpec(name="timestep_cond", dtype="float32", shape=shape))
        self.inputs = (
            TensorSpec(name="sample", dtype="float32", shape=latent),
            TensorSpec(name="timestep", dtype="float32", shape=("batch",)),
            TensorSpec(
                name="encoder_hidden_states",
                dtype="float32",
                shape=("batch", "text_tokens", context),
            ),
            *extra,
        )
        out = ("batch", int(config.out_channels), "latent_height", "latent_width")
        self.outputs = (TensorSpec(name="noise_pred", dtype="float32", shape=out),)

    def dims(self, ranges: BuildRanges) -> DimRanges:
        return {
            "batch": _batch_dims(ranges, 2),
            **_latent_dims(ranges, self.vae_scale_factor),
            "text_tokens": _text_dims(ranges, self.max_length),
        }

    def trace_point(self, ranges: BuildRanges) -> Point:
        # diffusers' UNet upsamples by a fixed factor when the latent size divides its downsampling
        # factor, and to the skip connection's size otherwise. Tracing at a size that does not
        # divide records the second path, which is exact for every size, so the engine accepts
        # any multiple of the VAE factor as diffusers does.
        point = self.opt_point(ranges)
        if self.down_factor > 1:
            for symbol in ("latent_height", "latent_width"):
                if point[symbol] % self.down_factor == 0:
                    point[symbol] += 1
        # Traced longer than it is validated (at one chunk) where the range allows, so that a
        # text length fixed by the trace would fail the build instead of a long prompt.
        point["text_tokens"] = min(2 * self.max_length, self.dims(ranges)["text_tokens"][2])
        return point

    def module(self) -> torch.nn.Module:
        names = [t.name for t in self.inputs[3:]]

        def call(m: Any, sample: Any, t: Any, context: Any, *extra: Any) -> Any:
            named = dict(zip(names, extra, strict=True))
            added = {k: named[k] for k in ("text_embeds", "time_ids") if k in named}
            return m(
                sample,
                t,
                context,
                timestep_cond=named.get("timestep_cond"),
                added_cond_kwargs=added or None,
                return_dict=False,
            )[0]

        return _Wrapper(self.unet, call)

    def sample_inputs(self, point: Point, rng: np.random.Generator) -> dict[str, np.ndarray]:
        batch = point["batch"]
        _, channels, _, _ = self.inputs[0].shape
        context = self.inputs[2].shape[2]
        latent = (batch, int(channels), point["latent_height"], point["latent_width"])
        inputs = {
            "sample": rng.standard_normal(latent, dtype=np.float32),
            "timestep": np.full((batch,), 500.0, dtype=np.float32),
            "encoder_hidden_states": rng.standard_normal(
                (batch, point["text_tokens"], int(context)), dtype=np.float32
            ),
        }
        for spec in self.inputs[3:]:
            width = int(spec.shape[1])
            if spec.name == "text_embeds":
                inputs[spec.name] = rng.standard_normal((batch, width), dtype=np.float32)
            elif spec.name == "time_ids":
                # Sizes in pixels, a zero crop, and the target size (or aesthetic score 6).
                f = self.vae_scale_factor
                size = [point["latent_height"] * f, point["latent_width"] * f]
                ids = [*size, 0, 0, *(size if width == 6 else [6.0])]
                inputs[spec.name] = np.tile(np.asarray(ids, np.float32), (batch, 1))
            else:  # timestep_cond: guidance scale 7.5, as a latent consistency model embeds it
                inputs[spec.name] = guidance_embedding(np.full((batch,), 7.5), width)
        return inputs


class _VaeSpec(ComponentSpec):
    """The VAE halves share their dims: images and latents one VAE factor apart, no guidance."""

    vae_scale_factor: int

    def dims(self, ranges: BuildRanges) -> DimRanges:
        latent = _latent_dims(ranges, self.vae_scale_factor)
        f = self.vae_scale_factor
        (h0, h1, h2), (w0, w1, w2) = latent["latent_height"], latent["latent_width"]
        return {
            "batch": _batch_dims(ranges, 1),
            **latent,
            "height": (h0 * f, h1 * f, h2 * f),
            "width": (w0 * f, w1 * f, w2 * f),
        }


class VaeDecoderSpec(_VaeSpec):
    """VAE decoder: scaled latents to an image in [-1, 1]."""

    name = "vae_decoder"

    def __init__(self, vae: Any, vae_scale_factor: int) -> None:
        self.vae = vae
        self.vae_scale_factor = vae_scale_factor
        config = vae.config
        self.inputs = (
            TensorSpec(
                name="latent",
                dtype="float32",
                shape=("batch", int(config.latent_channels), "latent_height", "latent_width"),
            ),
        )
        self.outputs = (
            TensorSpec(
                name="image",
                dtype="float32",
                shape=("batch", int(config.out_channels), "height", "width"),
            ),
        )

    def module(self) -> torch.nn.Module:
        return _Wrapper(self.vae, lambda m, latent: m.decode(latent, return_dict=False)[0])

    def sample_inputs(self, point: Point, rng: np.random.Generator) -> dict[str, np.ndarray]:
        channels = int(self.inputs[0].shape[1])
        shape = (point["batch"], channels, point["latent_height"], point["latent_width"])
        # Latents as the decoder sees them: unit variance divided by the scaling factor.
        scale = float(self.vae.config.scaling_factor)
        return {"latent": rng.standard_normal(shape, dtype=np.float32) / np.float32(scale)}


class VaeEncoderSpec(_VaeSpec):
    """VAE encoder: an image in [-1, 1] to the latent distribution's mean and log-variance."""

    name = "vae_encoder"

    def __init__(self, vae: Any, vae_scale_factor: int) -> None:
        self.vae = vae
        self.vae_scale_factor = vae_scale_factor
        config = vae.config
        self.inputs = (
            TensorSpec(
                name="image",
                dtype="float32",
                shape=("batch", int(config.in_channels), "height", "width"),
            ),
        )
        moments = 2 * int(config.latent_channels)
        self.outputs = (
            TensorSpec(
                name="latent_moments",
                dtype="float32",
                shape=("batch", moments, "latent_height", "latent_width"),
            ),
        )

    def module(self) -> torch.nn.Module:
        return _Wrapper(self.vae, lambda m, image: m.encode(image).latent_dist.parameters)

    def sample_inputs(self, point: Point, rng: np.random.Generator) -> dict[str, np.ndarray]:
        channels = int(self.inputs[0].shape[1])
        shape = (point["batch"], channels, point["height"], point["width"])
        return {"image": rng.uniform(-1.0, 1.0, size=shape).astype(np.float32)}
