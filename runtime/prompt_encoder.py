"""A request's prompts to every UNet input besides the latents and the timestep.

Stable Diffusion 1.x/2.x: the text encoder's states. SDXL: both encoders' states side by side,
the second encoder's pooled output (`text_embeds`) and the size numbers (`time_ids`), as
StableDiffusionXLPipeline makes them; a refiner has the second encoder only. A latent
consistency model: the guidance scale's embedding (`timestep_cond`). Rows are negative prompts
then prompts when guided, each repeated for the images of its prompt, as diffusers orders them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from sdtrt.engine.base import Engine
from sdtrt.engine.manifest import ModelInfo
from sdtrt.runtime.conditioning import TextConditioner, TokenChunk
from sdtrt.runtime.guidance import guidance_embedding
from sdtrt.runtime.request import Request
from sdtrt.runtime.timings import Timings
from sdtrt.runtime.tokenizer import PromptTokenizer


class PromptEncoder:
    """Every text encoder engine of a pipeline, and what the UNet takes beside them."""

    def __init__(
        self,
        encoders: Mapping[str, Engine],
        tokenizers: Mapping[str, PromptTokenizer],
        model: ModelInfo,
        max_chunks: int,
    ) -> None:
        """`encoders` and `tokenizers` by text-encoder component, in the order the UNet joins
        their states; `max_chunks`: the text-encoder lengths the UNet was built to attend to."""
        self.model = model
        self.conditioners = {
            name: TextConditioner(encoders[name], tokenizers[name], max_chunks)
            for name in tokenizers
        }

    def check(self, request: Request) -> None:
        """Refuse what these engines cannot do before any of them runs."""
        for conditioner in self.conditioners.values():
            conditioner.check_clip_skip(request.clip_skip)

    def __call__(self, request: Request, timings: Timings) -> dict[str, np.ndarray]:
        """The UNet inputs that stay the same over the loop, read-only (GPU engines keep them
        on the device); the tokenizer's and text encoders' time goes into `timings`."""
        states, pooled = self._text(request, timings)
        inputs = {"encoder_hidden_states": states}
        if pooled is not None:
            inputs["text_embeds"] = pooled
            inputs["time_ids"] = self._time_ids(request)
        if self.model.guidance_embedding_dim is not None:
            scales = np.full((request.batch,), request.guidance_scale, dtype=np.float32)
            inputs["timestep_cond"] = guidance_embedding(scales, self.model.guidance_embedding_dim)
        for array in inputs.values():
            array.setflags(write=False)
        return inputs

    def _text(
        self, request: Request, timings: Timings
    ) -> tuple[np.ndarray, np.ndarray | None]:
        # diffusers pairs its prompt lists with the encoders present: a refiner's only encoder
        # (the second) reads `prompt`, not `prompt_2`.
        prompt_lists = [request.prompts, request.prompts_2 or request.prompts]
        negative_lists = [
            request.negative_prompts,
            request.negative_prompts_2 or request.negative_prompts,
        ]
        encode_negatives = request.guided and not request.zero_negatives
        mark = time.perf_counter()
        texts = [
            (negatives + prompts) if encode_negatives else list(prompts)
            for prompts, negatives in zip(prompt_lists, negative_lists, strict=False)
        ]
        chunks = self._tokenize(texts, request)
        timings.tokenize = time.perf_counter() - mark
        mark = time.perf_counter()
        states, pooled = [], None
        for conditioner, encoder_chunks in zip(self.conditioners.values(), chunks, strict=True):
            encoded, encoder_pooled = conditioner.encode(
                encoder_chunks, request.prompt_syntax, request.clip_skip, len(request.prompts)
            )
            states.append(encoded)
            if encoder_pooled is not None:
                pooled = encoder_pooled
        timings.text_encoder = time.perf_counter() - mark
        joined = states[0] if len(states) == 1 else np.concatenate(states, axis=-1)
        if request.guided and request.zero_negatives:
            joined = np.concatenate([np.zeros_like(joined), joined])
            if pooled is not None:
                pooled = np.concatenate([np.zeros_like(pooled), pooled])
        context = np.repeat(joined, request.images_per_prompt, axis=0)
        return context, None if pooled is None else np.repeat(
            pooled, request.images_per_prompt, axis=0
        )

    def _tokenize(self, texts: list[list[str]], request: Request) -> list[list[TokenChunk]]:
        conditioners = list(self.conditioners.values())
        chunks = [
            c.tokenize(t, request.prompt_syntax) for c, t in zip(conditioners, texts, strict=False)
        ]
        count = max(len(c) for c in chunks)
        if any(len(c) != count for c in chunks):  # encoders whose tokens split differently
            chunks = [
                c.tokenize(t, request.prompt_syntax, count)
                for c, t in zip(conditioners, texts, strict=False)
            ]
        return chunks

    def _time_ids(self, request: Request) -> np.ndarray:
        """SDXL's size numbers per row: original size, crop, then the target size or, for a
        refiner, the aesthetic score (the negative rows' own score)."""
        sizes = request.sizes
        output = (request.height, request.width)
        start = [*(sizes.original_size or output), *sizes.crops_coords_top_left]
        if self.model.requires_aesthetics_score:
            positive = [*start, sizes.aesthetic_score]
            negative = [*start, sizes.negative_aesthetic_score]
        else:
            positive = negative = [*start, *(sizes.target_size or output)]
        rows = [positive] * request.batch
        if request.guided:
            rows = [negative] * request.batch + rows
        return np.asarray(rows, dtype=np.float32)
