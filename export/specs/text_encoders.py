"""The CLIP text encoders' specs: Stable Diffusion's (last state, and every layer normalised for
clip skip) and SDXL's (every layer's input, and the second encoder's pooled projection)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sdtrt.engine.ranges import BuildRanges
from sdtrt.engine.tensors import TensorSpec
from sdtrt.export.specs.base import ComponentSpec, DimRanges, Point, Wrapper, batch_dims


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
        return {"batch": batch_dims(ranges, 2)}

    def module(self) -> torch.nn.Module:
        return Wrapper(self.text_encoder, _text_states)

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
        return {"batch": batch_dims(ranges, 2)}

    def module(self) -> torch.nn.Module:
        return Wrapper(self.text_encoder, _xl_text_states)

    def sample_inputs(self, point: Point, rng: np.random.Generator) -> dict[str, np.ndarray]:
        length = int(self.inputs[0].shape[1])
        ids = rng.integers(0, self.vocab_size, size=(point["batch"], length), dtype=np.int32)
        return {"input_ids": ids}


# The T5 lengths SD 3 pipelines take (diffusers refuses max_sequence_length above 512), and the
# one they use unless asked.
T5_LENGTHS = (1, 256, 512)


def t5_dims(ranges: BuildRanges) -> tuple[int, int, int]:
    """(min, opt, max) T5 tokens; one fixed length where the backend compiles fixed shapes."""
    _, opt, _ = T5_LENGTHS
    return (opt, opt, opt) if ranges.fixed_shapes else T5_LENGTHS


class T5EncoderSpec(ComponentSpec):
    """SD 3's T5 encoder (`T5EncoderModel`): token ids, padded to the call's sequence length, to
    its last hidden state. diffusers passes no attention mask, so the padding is attended to and
    the length is part of the input, not a detail of it."""

    name = "text_encoder_3"

    def __init__(self, text_encoder: Any) -> None:
        self.text_encoder = text_encoder
        config = text_encoder.config
        self.vocab_size = int(config.vocab_size)
        self.inputs = (TensorSpec(name="input_ids", dtype="int32", shape=("batch", "t5_tokens")),)
        self.outputs = (
            TensorSpec(
                name="last_hidden_state",
                dtype="float32",
                shape=("batch", "t5_tokens", int(config.d_model)),
            ),
        )

    def dims(self, ranges: BuildRanges) -> DimRanges:
        return {"batch": batch_dims(ranges, 2), "t5_tokens": t5_dims(ranges)}

    def module(self) -> torch.nn.Module:
        return Wrapper(
            self.text_encoder, lambda m, ids: m(ids.to(torch.int64), return_dict=False)[0]
        )

    def sample_inputs(self, point: Point, rng: np.random.Generator) -> dict[str, np.ndarray]:
        shape = (point["batch"], point["t5_tokens"])
        return {"input_ids": rng.integers(0, self.vocab_size, size=shape, dtype=np.int32)}
