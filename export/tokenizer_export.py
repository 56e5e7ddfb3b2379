"""The model's tokenizer as one tokenizer.json the torch-free runtime loads with `tokenizers`.

Conversions between tokenizer formats have shipped silent bugs, so the written file is trusted
only after it reproduces, id for id, the tokenizer diffusers itself loads from the model folder.
"""

from __future__ import annotations

from pathlib import Path

from sdtrt.errors import BuildError, ModelSourceError, first_line

# Prompts chosen to reach every stage of CLIP's tokenizer: normalisation, the pre-tokenizer's
# splits, byte fallback for non-Latin text, truncation and padding.
PROBE_PROMPTS = [
    "",
    "a photo of an astronaut riding a horse on mars",
    "  Mixed   CASE,\tTabs\nand newlines  ",
    "(masterpiece:1.2), [blurry], {detailed}, <lora:style:0.8>, best quality!!!",
    "it's a dog's life, they'll say we're done",
    "café crème brûlée, naïve façade",
    "東京の夜景、ネオン、雨",
    "Москва зимой, акварель",
    "emoji 🐱🚀✨ and symbols © ™ ∞ ≠",
    "numbers 1234567890 3.14 1/2 1920x1080 8k",
    "hyphen-ated under_scored dotted.words slash/separated",
    "a " * 120,
    " ".join(f"word{i}" for i in range(90)),
]


def export_tokenizer(source: Path, target: Path, max_positions: int) -> int:
    """Write `source`'s CLIP tokenizer to `target`, padding and truncating; return its length."""
    import transformers
    from tokenizers import Tokenizer

    try:
        # The class diffusers loads. transformers 5 backs it with `tokenizers` itself; older
        # versions hold a slow one, which the fast class converts.
        reference = transformers.CLIPTokenizer.from_pretrained(source)
        fast = (
            reference
            if reference.is_fast
            else transformers.CLIPTokenizerFast.from_pretrained(source)  # type: ignore[attr-defined]
        )
    except Exception as error:  # transformers raises many types for unreadable tokenizer files
        raise ModelSourceError(
            f"the tokenizer in {source} cannot be loaded: {first_line(error)}"
        ) from error
    length = int(reference.model_max_length)
    if not 2 <= length <= max_positions:
        raise ModelSourceError(
            f"the tokenizer in {source} pads to {length} tokens but the text encoder takes "
            f"{max_positions}; set model_max_length in its tokenizer_config.json"
        )
    if reference.pad_token_id is None:
        raise ModelSourceError(f"the tokenizer in {source} has no pad_token")
    backend = Tokenizer.from_str(fast.backend_tokenizer.to_str())
    backend.no_padding()
    backend.enable_truncation(max_length=length)
    backend.enable_padding(
        length=length, pad_id=reference.pad_token_id, pad_token=reference.pad_token
    )
    for prompt in PROBE_PROMPTS:
        expected = reference(
            prompt, padding="max_length", max_length=length, truncation=True
        ).input_ids
        if backend.encode(prompt).ids != list(expected):
            raise BuildError(
                f"the tokenizer in {source} does not convert faithfully (prompt {prompt[:40]!r} "
                "gets different token ids); report this with the tokenizer files"
            )
    target.parent.mkdir(parents=True, exist_ok=True)
    backend.save(str(target))
    return length


# T5's lengths to check the written tokenizer at: truncating a long prompt, and SD 3's default.
T5_PROBE_LENGTHS = (77, 256)


def export_t5_tokenizer(source: Path, target: Path) -> None:
    """Write `source`'s T5 tokenizer (SD 3's third) to `target`, without padding: each call
    pads to its own max_sequence_length (runtime/t5.py), as diffusers asks of its tokenizer."""
    import transformers
    from tokenizers import Tokenizer

    try:
        reference = transformers.T5TokenizerFast.from_pretrained(source)  # type: ignore[attr-defined]
    except Exception as error:  # transformers raises many types for unreadable tokenizer files
        raise ModelSourceError(
            f"the T5 tokenizer in {source} cannot be loaded: {first_line(error)}"
        ) from error
    if reference.pad_token_id is None or reference.eos_token_id is None:
        raise ModelSourceError(f"the T5 tokenizer in {source} has no pad or end token")
    backend = Tokenizer.from_str(reference.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    for length in T5_PROBE_LENGTHS:
        sized = Tokenizer.from_str(backend.to_str())
        sized.enable_truncation(max_length=length)
        sized.enable_padding(
            length=length, pad_id=reference.pad_token_id, pad_token=reference.pad_token
        )
        for prompt in PROBE_PROMPTS:
            expected = reference(
                prompt, padding="max_length", max_length=length, truncation=True
            ).input_ids
            if sized.encode(prompt).ids != list(expected):
                raise BuildError(
                    f"the T5 tokenizer in {source} does not convert faithfully (prompt "
                    f"{prompt[:40]!r} gets different token ids); report this with its files"
                )
    target.parent.mkdir(parents=True, exist_ok=True)
    backend.save(str(target))
