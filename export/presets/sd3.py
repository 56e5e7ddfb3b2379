"""The SD 3 presets: the MMDiT transformer, two CLIP encoders and T5, a 16-channel VAE, written
as an ordinary StableDiffusion3Pipeline folder with random weights from the preset's seed."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sdtrt.export.clip_vocab import (
    END,
    TINY_CORPUS,
    real_clip_merges,
    vocab_from_merges,
    write_clip_files,
)
from sdtrt.export.presets.table import SD15, SDXL, TINY, Preset

# stable-diffusion-3.5's scheduler_config.json.
SD3_SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0}
# T5's special tokens, at the ids T5 gives them.
T5_SPECIALS = ("<pad>", "</s>", "<unk>")


@dataclass(frozen=True)
class SD3Preset:
    name: str
    description: str
    transformer: dict[str, Any]  # SD3Transformer2DModel arguments
    vae: dict[str, Any]
    clip: Preset  # the CLIP encoders' configs and vocabulary come from an SD/SDXL preset
    text_encoder_3: dict[str, Any] | None  # T5Config arguments, vocabulary aside; None: no T5
    # T5's vocabulary: its pieces (special tokens first) and sentinel tokens after them, and the
    # embedding's rows (T5-XXL's 32,128 for 32,100 tokens; None: one per token).
    t5_vocab: Callable[[], list[tuple[str, float]]] = lambda: trained_t5_vocab(160)
    t5_extra_ids: int = 0
    t5_embedding_rows: int | None = None
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SD3_SCHEDULER))
    seed: int = 0
    pipeline_class: str = "StableDiffusion3Pipeline"
    dtype: str = "float32"  # of the weights written (real SD 3.5 folders hold bf16 and fp16)


def trained_t5_vocab(size: int) -> list[tuple[str, float]]:
    """A SentencePiece unigram vocabulary learnt from the tiny corpus (at most `size` pieces),
    in a stable order (the trainer's ties fall either way)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(
        vocab_size=size, special_tokens=list(T5_SPECIALS), unk_token="<unk>", show_progress=False
    )
    tokenizer.train_from_iterator(TINY_CORPUS, trainer)
    learnt = json.loads(tokenizer.to_str())["model"]["vocab"]
    pieces = sorted(
        ((piece, round(score, 6)) for piece, score in learnt if piece not in T5_SPECIALS),
        key=lambda item: (-item[1], item[0]),
    )
    return [(special, 0.0) for special in T5_SPECIALS] + pieces


T5_PIECES = 32000  # T5's SentencePiece vocabulary, its 100 sentinel tokens aside


def standin_t5_vocab() -> list[tuple[str, float]]:
    """A stand-in for T5's 32,000 SentencePiece pieces, which no package on the registry ships:
    CLIP's real BPE vocabulary written as unigram pieces (a word-final token `cat</w>` as the
    word-initial piece `▁cat`), in CLIP's merge order, each scored by the log of its rank as a
    unigram model's frequencies fall. English text splits into real sub-words, as with T5's."""
    merges = real_clip_merges()
    pieces: dict[str, None] = {}
    for token in vocab_from_merges(merges):
        piece = "▁" + token[: -len("</w>")] if token.endswith("</w>") else token
        if piece not in T5_SPECIALS and piece not in ("<|startoftext|>", END):
            pieces.setdefault(piece)
    ordered = list(pieces)[: T5_PIECES - len(T5_SPECIALS)]
    scored = [(piece, -math.log(rank + 2)) for rank, piece in enumerate(ordered)]
    return [(special, 0.0) for special in T5_SPECIALS] + scored


def write_sd3(preset: SD3Preset, directory: Path) -> None:
    """The preset as a StableDiffusion3Pipeline folder, written a module at a time in the
    preset's dtype: the full-size one holds at most T5-XXL's 9.5 GB of bf16 weights at once."""
    import diffusers
    import torch

    index: dict[str, Any] = {
        "_class_name": preset.pipeline_class,
        "_diffusers_version": diffusers.__version__,
    }

    def save(folder: str, module: Any, library: str) -> None:
        module.save_pretrained(directory / folder, safe_serialization=True)
        index[folder] = [library, type(module).__name__]

    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_config(preset.scheduler)
    save("scheduler", scheduler, "diffusers")
    merges = preset.clip.merges()
    # SD 3's first CLIP tokenizer pads with its end token, the second (OpenCLIP) with "!".
    pads = {"tokenizer": END, "tokenizer_2": "!"}
    for folder, pad in pads.items():
        write_clip_files(directory / folder, merges, pad)
        index[folder] = ["transformers", "CLIPTokenizer"]
    pieces = None
    if preset.text_encoder_3 is not None:
        pieces = preset.t5_vocab()
        from transformers import T5TokenizerFast  # type: ignore[attr-defined]

        tokenizer = T5TokenizerFast(vocab=pieces, extra_ids=preset.t5_extra_ids)
        tokenizer.save_pretrained(directory / "tokenizer_3")
        index["tokenizer_3"] = ["transformers", "T5TokenizerFast"]
    torch.manual_seed(preset.seed)
    default = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, preset.dtype))
    try:
        _write_modules(preset, merges, pads, pieces, save)
    finally:
        torch.set_default_dtype(default)
    if preset.text_encoder_3 is None:
        index["text_encoder_3"] = index["tokenizer_3"] = [None, None]
    text = json.dumps(dict(sorted(index.items())), indent=2) + "\n"
    (directory / "model_index.json").write_text(text, encoding="utf-8")


def _write_modules(
    preset: SD3Preset,
    merges: list[tuple[str, str]],
    pads: dict[str, str],
    pieces: list[tuple[str, float]] | None,
    save: Any,
) -> None:
    """Each network made with random weights, saved and let go before the next."""
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    save("transformer", SD3Transformer2DModel(**preset.transformer), "diffusers")
    save("vae", AutoencoderKL(**preset.vae), "diffusers")
    vocab = vocab_from_merges(merges)
    for index, pad in enumerate(pads.values()):
        config = preset.clip.text_encoder if index == 0 else preset.clip.text_encoder_2
        assert config is not None
        text_config = CLIPTextConfig(
            vocab_size=len(vocab), pad_token_id=vocab[pad], eos_token_id=vocab[END], **config
        )
        folder = "text_encoder" if index == 0 else "text_encoder_2"
        save(folder, CLIPTextModelWithProjection(text_config), "transformers")
    if preset.text_encoder_3 is not None and pieces is not None:
        rows = preset.t5_embedding_rows or len(pieces) + preset.t5_extra_ids
        t5_config = T5Config(
            vocab_size=rows, pad_token_id=0, eos_token_id=1, **preset.text_encoder_3
        )
        save("text_encoder_3", T5EncoderModel(t5_config), "transformers")


# SD 3's VAE: 16 latent channels, scaled and shifted, without the quant convolutions.
SD3_VAE = {
    "latent_channels": 16,
    "scaling_factor": 1.5305,
    "shift_factor": 0.0609,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}


# A few-MB SD 3.5 lookalike with every part the real one has: two joint blocks, the first with
# SD 3.5's second (image-only) attention, q/k RMS norm, T5 with gated GELU. CLIP's states (32 +
# 48 wide) pad to T5's 96; the pooled outputs (32 + 32) make the transformer's 64.
TINY_SD3 = SD3Preset(
    name="tiny-sd3",
    description="a few-MB SD 3.5 lookalike (MMDiT-X, three text encoders), 64x64 px",
    transformer={
        "sample_size": 32,
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 16,
        "num_layers": 2,
        "attention_head_dim": 8,
        "num_attention_heads": 4,
        "joint_attention_dim": 96,
        "caption_projection_dim": 32,
        "pooled_projection_dim": 64,
        "pos_embed_max_size": 64,
        "dual_attention_layers": (0,),
        "qk_norm": "rms_norm",
    },
    vae={**TINY.vae, **SD3_VAE},
    clip=Preset(
        name="tiny-sd3-clip",
        description="",
        unet={},
        vae={},
        text_encoder={**TINY.text_encoder, "projection_dim": 32},
        text_encoder_2={
            **TINY.text_encoder,
            "hidden_size": 48,
            "intermediate_size": 64,
            "hidden_act": "gelu",
            "projection_dim": 32,
        },
        merges=TINY.merges,
    ),
    text_encoder_3={
        "d_model": 96,
        "d_kv": 16,
        "d_ff": 128,
        "num_layers": 2,
        "num_heads": 4,
        "relative_attention_num_buckets": 8,
        "relative_attention_max_distance": 32,
        "feed_forward_proj": "gated-gelu",
    },
)

# SD 3.5 Large Turbo's lookalike: the same networks, sampled in 4 steps without guidance by
# default, as its name makes sdtrt run it.
TINY_SD3_TURBO = replace(
    TINY_SD3,
    name="tiny-sd3-turbo",
    description="the tiny SD 3 model as an SD 3.5 Large Turbo lookalike: 4 steps, no guidance",
)

# Stable Diffusion 3.5 Medium as its configs have it: 24 MMDiT-X blocks (the first 13 with the
# second, image-only attention), CLIP ViT-L and OpenCLIP ViT-bigG with CLIP's real vocabulary,
# T5-XXL (4.7 B parameters) with a stand-in vocabulary of T5's size; bf16 weights, as the model
# ships, which also keeps writing it within 16 GB.
SD35_MEDIUM = SD3Preset(
    name="sd35-medium",
    description="the Stable Diffusion 3.5 Medium architecture (2.5B MMDiT-X, CLIP ViT-L, "
    "OpenCLIP ViT-bigG, T5-XXL), random weights",
    transformer={
        "sample_size": 128,
        "patch_size": 2,
        "in_channels": 16,
        "out_channels": 16,
        "num_layers": 24,
        "attention_head_dim": 64,
        "num_attention_heads": 24,
        "joint_attention_dim": 4096,
        "caption_projection_dim": 1536,
        "pooled_projection_dim": 2048,
        "pos_embed_max_size": 384,
        "dual_attention_layers": tuple(range(13)),
        "qk_norm": "rms_norm",
    },
    vae={**SD15.vae, "sample_size": 1024, **SD3_VAE},
    clip=Preset(
        name="sd35-clip",
        description="",
        unet={},
        vae={},
        text_encoder={**SD15.text_encoder, "projection_dim": 768},
        text_encoder_2=SDXL.text_encoder_2,
        merges=real_clip_merges,
    ),
    text_encoder_3={
        "d_model": 4096,
        "d_kv": 64,
        "d_ff": 10240,
        "num_layers": 24,
        "num_heads": 64,
        "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128,
        "feed_forward_proj": "gated-gelu",
    },
    t5_vocab=standin_t5_vocab,
    t5_extra_ids=100,
    t5_embedding_rows=32128,
    dtype="bfloat16",
)
