"""The SD 3 presets: the MMDiT transformer, two CLIP encoders and T5, a 16-channel VAE, written
as an ordinary StableDiffusion3Pipeline folder with random weights from the preset's seed."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdtrt.export.clip_vocab import END, TINY_CORPUS, vocab_from_merges, write_clip_files
from sdtrt.export.presets.table import TINY, Preset

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
    t5_vocab_size: int = 160  # asked of the trainer; the tiny corpus yields fewer pieces
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SD3_SCHEDULER))
    seed: int = 0
    pipeline_class: str = "StableDiffusion3Pipeline"


def t5_vocab(size: int) -> list[tuple[str, float]]:
    """A SentencePiece unigram vocabulary learnt from the tiny corpus, in a stable order (the
    trainer's ties fall either way)."""
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


def write_sd3(preset: SD3Preset, directory: Path) -> None:
    import diffusers
    import torch
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import (  # type: ignore[attr-defined]
        CLIPTextConfig,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
        T5Config,
        T5EncoderModel,
        T5TokenizerFast,
    )

    merges = preset.clip.merges()
    vocab = vocab_from_merges(merges)
    # SD 3's first CLIP tokenizer pads with its end token, the second (OpenCLIP) with "!".
    pads = {"tokenizer": END, "tokenizer_2": "!"}
    for folder, pad in pads.items():
        write_clip_files(directory / folder, merges, pad)
    torch.manual_seed(preset.seed)
    modules: dict[str, Any] = {
        "transformer": SD3Transformer2DModel(**preset.transformer),
        "vae": AutoencoderKL(**preset.vae),
        "scheduler": diffusers.FlowMatchEulerDiscreteScheduler.from_config(preset.scheduler),
        "text_encoder_3": None,
        "tokenizer_3": None,
    }
    for index, (folder, pad) in enumerate(pads.items()):
        config = preset.clip.text_encoder if index == 0 else preset.clip.text_encoder_2
        assert config is not None
        text_config = CLIPTextConfig(
            vocab_size=len(vocab), pad_token_id=vocab[pad], eos_token_id=vocab[END], **config
        )
        suffix = "" if index == 0 else "_2"
        modules[f"text_encoder{suffix}"] = CLIPTextModelWithProjection(text_config)
        modules[folder] = CLIPTokenizer.from_pretrained(directory / folder)
    if preset.text_encoder_3 is not None:
        pieces = t5_vocab(preset.t5_vocab_size)
        t5_config = T5Config(
            vocab_size=len(pieces), pad_token_id=0, eos_token_id=1, **preset.text_encoder_3
        )
        modules["text_encoder_3"] = T5EncoderModel(t5_config)
        modules["tokenizer_3"] = T5TokenizerFast(vocab=pieces, extra_ids=0)
    pipeline = getattr(diffusers, preset.pipeline_class)(**modules)
    pipeline.save_pretrained(directory, safe_serialization=True)
    # save_pretrained rewrites the CLIP tokenizers in its own layout; restore the classic files.
    for folder, pad in pads.items():
        shutil.rmtree(directory / folder)
        write_clip_files(directory / folder, merges, pad)


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
    vae={
        **TINY.vae,
        "latent_channels": 16,
        "scaling_factor": 1.5305,
        "shift_factor": 0.0609,
        "use_quant_conv": False,
        "use_post_quant_conv": False,
    },
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
