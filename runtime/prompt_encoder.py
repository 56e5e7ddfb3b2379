"""A request's prompts to every denoiser input besides the latents and the timestep.

Each text encoder runs on its prompts (a model's second encoder on `prompt_2` where given);
the model's family turns their outputs into the denoiser's inputs (runtime/families/). Rows are
negative prompts then prompts when guided, each repeated for the images of its prompt, as
diffusers orders them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np

from sdtrt.engine.base import Engine
from sdtrt.engine.manifest import ModelInfo
from sdtrt.runtime.conditioning import TextConditioner, TokenChunk
from sdtrt.runtime.families import EncodedText, family_of
from sdtrt.runtime.request import Request
from sdtrt.runtime.t5 import T5Conditioner, T5PromptTokenizer
from sdtrt.runtime.textual_inversion import Embedding, vectors_for
from sdtrt.runtime.timings import Timings
from sdtrt.runtime.tokenizer import PromptTokenizer


class PromptEncoder:
    """Every text encoder engine of a pipeline, and what the denoiser takes beside them."""

    def __init__(
        self,
        encoders: Mapping[str, Engine],
        tokenizers: Mapping[str, PromptTokenizer | T5PromptTokenizer],
        model: ModelInfo,
        max_chunks: int,
    ) -> None:
        """`encoders` and `tokenizers` by text-encoder component, in the order the denoiser
        joins their states (CLIP's, then T5's); `max_chunks`: the text-encoder lengths it was
        built to attend to."""
        self.model = model
        self.family = family_of(model)
        self.conditioners = {
            name: TextConditioner(encoders[name], tokenizer, max_chunks)
            for name, tokenizer in tokenizers.items()
            if isinstance(tokenizer, PromptTokenizer)
        }
        self.t5 = [
            T5Conditioner(encoders[name], tokenizer)
            for name, tokenizer in tokenizers.items()
            if isinstance(tokenizer, T5PromptTokenizer)
        ]

    def add_embedding(self, embedding: Embedding, name: str) -> None:
        """Load a textual-inversion embedding (read from file `name`) into every CLIP text
        encoder, each its own table of it; nothing changes where one of them refuses."""
        conditioners = list(self.conditioners.values())
        tokens = embedding.tokens()
        for conditioner in conditioners:
            conditioner.check_embedding(tokens)
        widths = [int(conditioner.width or 0) for conditioner in conditioners]
        tables = vectors_for(embedding, widths, name)
        for conditioner, vectors in zip(conditioners, tables, strict=True):
            conditioner.add_embedding(tokens, vectors)

    def check(self, request: Request) -> None:
        """Refuse what these engines cannot do before any of them runs."""
        for conditioner in self.conditioners.values():
            conditioner.check_clip_skip(request.clip_skip)

    def __call__(self, request: Request, timings: Timings) -> dict[str, np.ndarray]:
        """The denoiser inputs that stay the same over the loop, read-only (GPU engines keep
        them on the device); the tokenizer's and text encoders' time goes into `timings`."""
        inputs = self.family.denoiser_inputs(request, self._text(request, timings), self.model)
        for array in inputs.values():
            array.setflags(write=False)
        return inputs

    def _text(self, request: Request, timings: Timings) -> list[EncodedText]:
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
        encoded = [
            EncodedText(
                *conditioner.encode(
                    encoder_chunks, request.prompt_syntax, request.clip_skip, len(request.prompts)
                )
            )
            for conditioner, encoder_chunks in zip(self.conditioners.values(), chunks, strict=True)
        ]
        prompts_3 = request.prompts_3 or request.prompts
        negatives_3 = request.negative_prompts_3 or request.negative_prompts
        texts_3 = (negatives_3 + prompts_3) if encode_negatives else list(prompts_3)
        for t5 in self.t5:
            encoded.append(EncodedText(t5.encode(texts_3, request.max_sequence_length), None))
        timings.text_encoder = time.perf_counter() - mark
        return encoded

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
