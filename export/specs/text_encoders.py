"""The CLIP text encoders' specs: Stable Diffusion's (last state, and every layer normalised for
clip skip) and SDXL's (every layer's input, and the second encoder's pooled projection).

Both take token embeddings beyond the model's table as a second input (ADDED_EMBEDDINGS), which
ids from the vocabulary's size on pick: textual-inversion embeddings load at run time, without
a rebuild. In torch the rows reach the table's lookup through a forward hook on it (PyTorch's
way to replace a module's output), which the export traces like any other operation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from sdtrt.engine.ranges import BuildRanges
from sdtrt.engine.tensors import ADDED_EMBEDDINGS, MAX_ADDED_TOKENS, TensorSpec
from sdtrt.export.specs.base import ComponentSpec, DimRanges, Point, Wrapper, batch_dims


def _with_added(model: Any, ids: torch.Tensor, added: torch.Tensor, run: Callable[[], Any]) -> Any:
    """`run()`'s result with `added` rows appended to `model`'s token embedding table, which
    `ids` past the table pick."""
    # transformers 5 flattened CLIPTextModel; earlier versions nest it in `text_model`.
    table = getattr(model, "text_model", model).embeddings.token_embedding
    weight: torch.Tensor = table.weight

    def in_range(module: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> Any:
        # The table's own lookup runs first and must stay inside it; its output is replaced.
        return (args[0].clamp(max=weight.shape[0] - 1),)

    def lookup(module: torch.nn.Module, args: tuple[torch.Tensor, ...], output: Any) -> Any:
        rows = torch.cat([weight, added.to(weight.dtype)])
        return torch.nn.functional.embedding(ids, rows)

    hooks = [table.register_forward_pre_hook(in_range), table.register_forward_hook(lookup)]
    try:
        return run()
    finally:
        for hook in hooks:
            hook.remove()


def _text_states(
    model: Any, ids: torch.Tensor, added: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The last hidden state, and the final layer norm of every earlier one (clip skip)."""
    ids = ids.to(torch.int64)
    last, _, hidden = _with_added(
        model, ids, added, lambda: model(ids, output_hidden_states=True, return_dict=False)
    )
    norm = getattr(model, "text_model", model).final_layer_norm
    return last, torch.stack([norm(h) for h in hidden[:-1]], dim=1)


def _added_input(hidden: int) -> TensorSpec:
    return TensorSpec(name=ADDED_EMBEDDINGS, dtype="float32", shape=("added_tokens", hidden))


def _clip_dims(ranges: BuildRanges) -> DimRanges:
    # Prompts and negative prompts are encoded in one call, hence twice the images.
    added = (MAX_ADDED_TOKENS,) * 3 if ranges.fixed_shapes else (1, 1, MAX_ADDED_TOKENS)
    return {"batch": batch_dims(ranges, 2), "added_tokens": added}  # type: ignore[dict-item]


def _clip_sample(
    point: Point, length: int, vocab: int, hidden: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Ids of the model's tokens and of the added rows, and rows at CLIP's embedding scale."""
    rows = point["added_tokens"]
    ids = rng.integers(0, vocab + rows, size=(point["batch"], length), dtype=np.int32)
    added = rng.standard_normal((rows, hidden), dtype=np.float32) * np.float32(0.02)
    return {"input_ids": ids, ADDED_EMBEDDINGS: added}


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
        self.hidden = hidden
        self.inputs = (
            TensorSpec(name="input_ids", dtype="int32", shape=("batch", max_length)),
            _added_input(hidden),
        )
        self.outputs = (
            TensorSpec(
                name="last_hidden_state", dtype="float32", shape=("batch", max_length, hidden)
            ),
            TensorSpec(
                name="layer_states", dtype="float32", shape=("batch", layers, max_length, hidden)
            ),
        )

    def dims(self, ranges: BuildRanges) -> DimRanges:
        return _clip_dims(ranges)

    def module(self) -> torch.nn.Module:
        return Wrapper(self.text_encoder, _text_states)

    def sample_inputs(self, point: Point, rng: np.random.Generator) -> dict[str, np.ndarray]:
        length = int(self.inputs[0].shape[1])
        return _clip_sample(point, length, self.vocab_size, self.hidden, rng)


def _xl_text_states(model: Any, ids: torch.Tensor, added: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The input of every encoder layer, and the projected pooled output where there is one."""
    ids = ids.to(torch.int64)
    out = _with_added(
        model, ids, added, lambda: model(ids, output_hidden_states=True, return_dict=True)
    )
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
        self.hidden = hidden
        self.inputs = (
            TensorSpec(name="input_ids", dtype="int32", shape=("batch", max_length)),
            _added_input(hidden),
        )
        states = TensorSpec(
            name="hidden_states", dtype="float32", shape=("batch", layers, max_length, hidden)
        )
        self.outputs: tuple[TensorSpec, ...] = (states,)
        if hasattr(text_encoder, "text_projection"):  # CLIPTextModelWithProjection
            pooled = ("batch", int(config.projection_dim))
            self.outputs += (TensorSpec(name="text_embeds", dtype="float32", shape=pooled),)

    def dims(self, ranges: BuildRanges) -> DimRanges:
        return _clip_dims(ranges)

    def module(self) -> torch.nn.Module:
        return Wrapper(self.text_encoder, _xl_text_states)

    def sample_inputs(self, point: Point, rng: np.random.Generator) -> dict[str, np.ndarray]:
        length = int(self.inputs[0].shape[1])
        return _clip_sample(point, length, self.vocab_size, self.hidden, rng)


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
