"""The built-in models' configs: real architectures and tiny lookalikes, each a `Preset` of
diffusers and transformers arguments (random weights, so nothing is downloaded), and the table
of them by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from sdtrt.export.clip_vocab import END, real_clip_merges, tiny_clip_merges

# Stable Diffusion 1.x's noise schedule and default sampler, as its scheduler_config.json has them.
SD1_SCHEDULER: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "trained_betas": None,
}


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    unet: dict[str, Any]
    vae: dict[str, Any]
    text_encoder: dict[str, Any]  # CLIPTextConfig arguments; vocab and special ids come later
    merges: Callable[[], list[tuple[str, str]]]
    scheduler: dict[str, Any] = field(default_factory=lambda: dict(SD1_SCHEDULER))
    # SD 1.x pads prompts with <|endoftext|>, SD 2.x with "!" (id 0); the text encoder attends
    # to every one of the 77 positions, so the pad token changes images.
    pad_token: str = END
    seed: int = 0
    pipeline_class: str = "StableDiffusionPipeline"  # model_index.json's _class_name
    scheduler_class: str = "PNDMScheduler"
    # SDXL: CLIPTextModelWithProjection arguments of the second text encoder (OpenCLIP, padded
    # with "!"); a refiner has only this one.
    text_encoder_2: dict[str, Any] | None = None
    second_encoder_only: bool = False
    # Arguments of the pipeline class beyond its modules (SDXL's force_zeros_for_empty_prompt,
    # the refiner's requires_aesthetics_score).
    pipeline_config: dict[str, Any] = field(default_factory=dict)


TINY = Preset(
    name="tiny",
    description="a few-MB Stable Diffusion 1.x lookalike, 64x64 px, for tests and demos",
    unet={
        "sample_size": 32,
        "block_out_channels": (32, 64),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    vae={
        "sample_size": 64,
        "block_out_channels": (32, 64),
        "down_block_types": ("DownEncoderBlock2D",) * 2,
        "up_block_types": ("UpDecoderBlock2D",) * 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
    },
    text_encoder={
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_attention_heads": 4,
        "num_hidden_layers": 5,
        "max_position_embeddings": 77,
        "layer_norm_eps": 1e-5,
        "hidden_act": "quick_gelu",
    },
    merges=tiny_clip_merges,
)

SD15 = Preset(
    name="sd15",
    description="the Stable Diffusion 1.5 architecture (860M UNet, CLIP ViT-L/14), random weights",
    unet={
        "sample_size": 64,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    vae={
        "sample_size": 512,
        "block_out_channels": (128, 256, 512, 512),
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "scaling_factor": 0.18215,
    },
    text_encoder={
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "max_position_embeddings": 77,
        "projection_dim": 768,
        "layer_norm_eps": 1e-5,
        "hidden_act": "quick_gelu",
    },
    merges=real_clip_merges,
)


def _inpainting(base: Preset, name: str, description: str, pipeline_class: str) -> Preset:
    """`base` as an inpainting model: its UNet also sees the mask and the masked image's
    latents, 4 + 1 + 4 input channels."""
    return replace(
        base,
        name=name,
        description=description,
        unet={**base.unet, "in_channels": 9},
        pipeline_class=pipeline_class,
    )


TINY_INPAINT = _inpainting(
    TINY,
    "tiny-inpaint",
    "the tiny model as a 9-channel inpainting model (StableDiffusionInpaintPipeline)",
    "StableDiffusionInpaintPipeline",
)

# SD 2.x 768-v: OpenCLIP's "!" padding and a v-prediction DDIM schedule, as stable-diffusion-2-1.
TINY_V = replace(
    TINY,
    name="tiny-v",
    description="the tiny model as an SD 2.x 768-v lookalike: v-prediction, '!' padding",
    scheduler={**SD1_SCHEDULER, "prediction_type": "v_prediction"},
    scheduler_class="DDIMScheduler",
    pad_token="!",
    text_encoder={**TINY.text_encoder, "hidden_act": "gelu"},
)

# Distilled few-step models. SD-Turbo: one to four steps of Euler on trailing timesteps, no
# guidance. LCM: the UNet embeds the guidance scale (time_cond_proj_dim), sampled with LCM.
EULER_TRAILING = {
    **{k: SD1_SCHEDULER[k] for k in ("beta_start", "beta_end", "beta_schedule")},
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "timestep_spacing": "trailing",
    "prediction_type": "epsilon",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}
TINY_TURBO = replace(
    TINY_V,
    name="tiny-turbo",
    description="the tiny model as an SD-Turbo lookalike: Euler on trailing timesteps",
    scheduler=EULER_TRAILING,
    scheduler_class="EulerDiscreteScheduler",
)
LCM_SCHEDULER = {
    **SD1_SCHEDULER,
    "set_alpha_to_one": True,
    "original_inference_steps": 50,
    "timestep_scaling": 10.0,
    "timestep_spacing": "leading",
}
TINY_LCM = replace(
    TINY,
    name="tiny-lcm",
    description="the tiny model as a latent consistency model (guidance embedded in the UNet)",
    unet={**TINY.unet, "time_cond_proj_dim": 16},
    scheduler=LCM_SCHEDULER,
    scheduler_class="LCMScheduler",
    pipeline_class="LatentConsistencyModelPipeline",
)

# SDXL's sampler as stable-diffusion-xl-base-1.0 ships it.
SDXL_SCHEDULER = {
    **EULER_TRAILING,
    "timestep_spacing": "leading",
    "sample_max_value": 1.0,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "clip_sample": False,
}
# SDXL's UNet takes both encoders' states side by side (cross_attention_dim = 32 + 48 here) and
# an embedding of the pooled prompt and six size numbers (projection input = 32 + 6 x 8). The
# encoders differ in width, as SDXL's do (768, 1280), which single-file loading tells them by.
TINY_SDXL = Preset(
    name="tiny-sdxl",
    description="a few-MB SDXL lookalike (two text encoders, size conditioning), 64x64 px",
    unet={
        "sample_size": 32,
        "block_out_channels": (32, 64),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": (2, 4),
        "use_linear_projection": True,
        "transformer_layers_per_block": (1, 2),
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 80,
        "cross_attention_dim": 80,
        "norm_num_groups": 32,
    },
    vae={**TINY.vae, "scaling_factor": 0.13025, "force_upcast": True},
    text_encoder=TINY.text_encoder,
    text_encoder_2={
        **TINY.text_encoder,
        "hidden_size": 48,
        "intermediate_size": 64,
        "hidden_act": "gelu",
        "projection_dim": 32,
    },
    merges=tiny_clip_merges,
    scheduler=SDXL_SCHEDULER,
    scheduler_class="EulerDiscreteScheduler",
    pipeline_class="StableDiffusionXLPipeline",
    pipeline_config={"force_zeros_for_empty_prompt": True},
)
# The refiner: the second text encoder only, and an aesthetic score in place of the target size
# among the UNet's size numbers (projection input = 32 + 5 x 8).
TINY_SDXL_REFINER = replace(
    TINY_SDXL,
    name="tiny-sdxl-refiner",
    description="a few-MB SDXL refiner lookalike (second text encoder only, aesthetic score)",
    unet={**TINY_SDXL.unet, "cross_attention_dim": 48, "projection_class_embeddings_input_dim": 72},
    second_encoder_only=True,
    pipeline_class="StableDiffusionXLImg2ImgPipeline",
    pipeline_config={"requires_aesthetics_score": True, "force_zeros_for_empty_prompt": False},
)
TINY_SDXL_INPAINT = _inpainting(
    TINY_SDXL,
    "tiny-sdxl-inpaint",
    "the tiny SDXL model as a 9-channel inpainting model",
    "StableDiffusionXLInpaintPipeline",
)
TINY_SDXL_TURBO = replace(
    TINY_SDXL,
    name="tiny-sdxl-turbo",
    description="the tiny SDXL model as an SDXL-Turbo lookalike: Euler ancestral, trailing",
    scheduler={**SDXL_SCHEDULER, "timestep_spacing": "trailing"},
    scheduler_class="EulerAncestralDiscreteScheduler",
)
SDXL = Preset(
    name="sdxl",
    description="the SDXL 1.0 base architecture (2.6B UNet, CLIP ViT-L + OpenCLIP ViT-bigG), "
    "random weights",
    unet={
        "sample_size": 128,
        "block_out_channels": (320, 640, 1280),
        "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "attention_head_dim": (5, 10, 20),
        "use_linear_projection": True,
        "transformer_layers_per_block": (1, 2, 10),
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
        "cross_attention_dim": 2048,
        "norm_num_groups": 32,
    },
    vae={**SD15.vae, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
    text_encoder=SD15.text_encoder,
    text_encoder_2={
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_attention_heads": 20,
        "num_hidden_layers": 32,
        "max_position_embeddings": 77,
        "projection_dim": 1280,
        "layer_norm_eps": 1e-5,
        "hidden_act": "gelu",
    },
    merges=real_clip_merges,
    scheduler=SDXL_SCHEDULER,
    scheduler_class="EulerDiscreteScheduler",
    pipeline_class="StableDiffusionXLPipeline",
    pipeline_config={"force_zeros_for_empty_prompt": True},
)

UNET_PRESETS = {
    p.name: p
    for p in (
        TINY,
        TINY_INPAINT,
        TINY_V,
        TINY_TURBO,
        TINY_LCM,
        TINY_SDXL,
        TINY_SDXL_REFINER,
        TINY_SDXL_INPAINT,
        TINY_SDXL_TURBO,
        SD15,
        SDXL,
    )
}
