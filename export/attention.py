"""Attention exported as one node: ONNX Runtime's `com.microsoft.MultiHeadAttention`.

Traced as plain ops, each attention becomes MatMul, Softmax and MatMul with the full
(batch x heads x queries x keys) score tensor in between: at 512x512 the UNet's first blocks
write and read 2 x 8 x 4096 x 4096 scores per layer. ONNX Runtime's own fusion pass for UNets
does not match the TorchScript exporter's attention (and fails on numpy 2), so the export writes
the fused node itself: the CUDA provider runs it as flash or memory-efficient attention, and the
CPU provider has a kernel too (fp32 and fp16), so a fused graph is tested anywhere.

Only diffusers' `Attention` layers take this path: those whose processor does nothing but attend
(no masks, no spatial or q/k normalisation, no added keys), and SD 3's joint attention, whose
normalised image and text projections attend in one node; the others keep theirs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F

from sdtrt.engine.graph_style import CONTRIB_DOMAIN

OP = "MultiHeadAttention"


class _MultiHeadAttention(torch.autograd.Function):
    """q (batch, queries, heads*dim), k and v (batch, keys, heads*dim) -> (batch, queries,
    heads*dim): torch's scaled dot-product attention when run, one contrib node when exported."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, scale: float
    ) -> torch.Tensor:
        # No shape is read here: the exporter traces this body too, and dims read from tensors
        # inside it break its graph passes.
        def split(x: torch.Tensor) -> torch.Tensor:
            return x.unflatten(-1, (heads, -1)).transpose(1, 2)

        out = F.scaled_dot_product_attention(split(q), split(k), split(v), scale=scale)
        return out.transpose(1, 2).flatten(2)

    @staticmethod
    def symbolic(g: Any, q: Any, k: Any, v: Any, heads: int, scale: float) -> Any:
        out = g.op(f"{CONTRIB_DOMAIN}::{OP}", q, k, v, num_heads_i=heads, scale_f=scale)
        # q's type, v's width equalling q's in every diffusers attention; the batch and token
        # counts left unknown, since the trace's own would be taken as fixed downstream.
        sizes = q.type().varyingSizes()
        width = sizes[-1] if sizes else None
        out.setType(q.type().with_sizes([None, None, width]))
        return out


class _Replacing:
    """A processor in place of diffusers' own, which it hands the calls it cannot express."""

    def __init__(self, replaced: Any) -> None:
        self.replaced = replaced


class FusedAttnProcessor(_Replacing):
    """A diffusers attention processor that attends through `_MultiHeadAttention`, and hands
    every call it cannot express that way to the processor it replaced."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> torch.Tensor:
        if attention_mask is not None or not _plain(attn) or hidden_states.ndim not in (3, 4):
            return self.replaced(
                attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs
            )
        residual = hidden_states
        spatial = hidden_states.ndim == 4
        if spatial:  # the VAE's mid-block: (b, c, h, w) -> (b, h*w, c)
            batch, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        out = _MultiHeadAttention.apply(
            attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context), attn.heads, attn.scale
        )
        out = attn.to_out[1](attn.to_out[0](out))
        if spatial:
            out = out.transpose(1, 2).reshape(batch, channels, height, width)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


class FusedJointAttnProcessor(_Replacing):
    """SD 3's joint attention (diffusers' JointAttnProcessor2_0) through `_MultiHeadAttention`:
    the image tokens' and the text tokens' projections, each normalised per head where the
    layer says so, attend together in one node, and are split and projected back."""

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        if attention_mask is not None or hidden_states.ndim != 3:
            return self.replaced(
                attn, hidden_states, encoder_hidden_states, attention_mask, *args, **kwargs
            )
        heads = attn.heads

        def normed(x: torch.Tensor, norm: Any) -> torch.Tensor:
            # A per-head norm over each head's features, as on (batch, heads, tokens, dim).
            return x if norm is None else norm(x.unflatten(-1, (heads, -1))).flatten(-2)

        query = normed(attn.to_q(hidden_states), attn.norm_q)
        key = normed(attn.to_k(hidden_states), attn.norm_k)
        value = attn.to_v(hidden_states)
        context = encoder_hidden_states
        if context is not None:
            query = torch.cat([query, normed(attn.add_q_proj(context), attn.norm_added_q)], 1)
            key = torch.cat([key, normed(attn.add_k_proj(context), attn.norm_added_k)], 1)
            value = torch.cat([value, attn.add_v_proj(context)], 1)
        head_dim = attn.to_k.out_features // heads
        out = _MultiHeadAttention.apply(query, key, value, heads, head_dim**-0.5)
        if context is not None:
            tokens = hidden_states.shape[1]
            out, context = out[:, :tokens], out[:, tokens:]
            if not attn.context_pre_only:
                context = attn.to_add_out(context)
        out = attn.to_out[1](attn.to_out[0](out))
        return out if context is None else (out, context)


def _plain(attn: Any) -> bool:
    """Whether this layer only projects, attends and projects back (what the fused node does)."""
    extras = ("spatial_norm", "norm_q", "norm_k", "add_q_proj", "add_k_proj", "add_v_proj")
    if any(getattr(attn, name, None) is not None for name in extras):
        return False
    inner = attn.to_q.out_features
    return bool(
        attn.to_k.out_features == inner == attn.to_v.out_features and inner % attn.heads == 0
    )


@contextlib.contextmanager
def fused_attention(module: torch.nn.Module) -> Iterator[int]:
    """Within the block, `module`'s diffusers attention layers attend through the fused node;
    yields how many layers were switched. Their processors are put back on the way out."""
    try:
        from diffusers.models.attention_processor import Attention, JointAttnProcessor2_0
    except ImportError:  # a text encoder alone needs no diffusers
        yield 0
        return
    layers = [m for m in module.modules() if isinstance(m, Attention)]
    previous = [layer.processor for layer in layers]
    for layer in layers:
        joint = isinstance(layer.processor, JointAttnProcessor2_0)
        fused = (FusedJointAttnProcessor if joint else FusedAttnProcessor)(layer.processor)
        # diffusers types processors as a closed union of its own classes; any callable works.
        layer.set_processor(fused)  # type: ignore[arg-type]
    try:
        yield len(layers)
    finally:
        for layer, processor in zip(layers, previous, strict=True):
            layer.set_processor(processor)
