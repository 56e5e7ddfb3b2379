"""Random LoRA files for a diffusers folder, in the diffusers/PEFT and the kohya layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from sdtrt.engine.weights.lora import LoraSource
from sdtrt.engine.weights.safetensors import SafetensorsFile
from sdtrt.engine.weights.sgm_names import sgm_names

# Module name endings a LoRA of each network changes: attention, feed-forward, the 1x1
# projections around the transformer and a 3x3 ResNet convolution (LoCon-style).
UNET_TARGETS = (
    "attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k",
    "attn2.to_v", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "resnets.0.conv1",
)  # fmt: skip
TEXT_TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj",
                "mlp.fc1", "mlp.fc2")  # fmt: skip
WEIGHT_FILES = {
    "unet": "unet/diffusion_pytorch_model.safetensors",
    "text_encoder": "text_encoder/model.safetensors",
}
SDXL_WEIGHT_FILES = {**WEIGHT_FILES, "text_encoder_2": "text_encoder_2/model.safetensors"}
KOHYA_PREFIXES = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
# kohya's SDXL files: te1/te2, and the UNet's layers under SGM's names.
SDXL_KOHYA_PREFIXES = {
    "unet": "lora_unet_",
    "text_encoder": "lora_te1_",
    "text_encoder_2": "lora_te2_",
}


def _targets(
    model_dir: Path, clip_prefix: str = "", files: dict[str, str] = WEIGHT_FILES
) -> dict[str, dict[str, tuple[int, ...]]]:
    """component -> module -> weight shape, for the modules a test LoRA changes; CLIP's layers
    under `clip_prefix` (kohya files say `text_model.`, which transformers 5 no longer has)."""
    found: dict[str, dict[str, tuple[int, ...]]] = {}
    for component, relative in files.items():
        endings = UNET_TARGETS if component == "unet" else TEXT_TARGETS
        weights = SafetensorsFile(model_dir / relative)
        prefix = clip_prefix if component != "unet" else ""
        found[component] = {
            prefix + name[: -len(".weight")].removeprefix("text_model."): weights.shape(name)
            for name in weights.keys()
            if name.endswith(".weight") and name[: -len(".weight")].endswith(endings)
        }
    return found


def _pair(shape: tuple[int, ...], rank: int, rng: np.random.Generator):
    """(down, up) of a rank-`rank` update to a weight of `shape`, big enough to show."""
    fan_in = int(np.prod(shape[1:]))
    tail = shape[2:]
    down = rng.standard_normal((rank, *shape[1:]), dtype=np.float32) / np.float32(fan_in**0.5)
    up = rng.standard_normal((shape[0], rank, *((1,) * len(tail))), dtype=np.float32)
    return down, up * np.float32(0.3)


def write_diffusers_lora(model_dir: Path, path: Path, seed: int, rank: int = 4,
                         alpha: float | None = None,
                         files: dict[str, str] = WEIGHT_FILES) -> Path:  # fmt: skip
    """A diffusers/PEFT-layout LoRA (`unet.<m>.lora_A.weight`); `alpha` goes in the metadata
    header as diffusers writes it, else the file means alpha = rank."""
    rng = np.random.default_rng(seed)
    tensors = {}
    targets = _targets(model_dir, files=files)
    for component, modules in targets.items():
        for module, shape in sorted(modules.items()):
            down, up = _pair(shape, rank, rng)
            tensors[f"{component}.{module}.lora_A.weight"] = down
            tensors[f"{component}.{module}.lora_B.weight"] = up
    metadata = None
    if alpha is not None:
        config = {}
        for component, modules in targets.items():
            adapter = {"r": rank, "lora_alpha": alpha, "target_modules": sorted(modules)}
            config.update({f"{component}.{k}": v for k, v in adapter.items()})
        metadata = {"lora_adapter_metadata": json.dumps(config), "format": "pt"}
    save_file(tensors, str(path), metadata=metadata)
    return path


def _sgm_names(unet_weights: Path) -> dict[str, str]:
    """SGM's name of each UNet module (from all of them: the layers per block count)."""
    keys = SafetensorsFile(unet_weights).keys()
    return sgm_names(k[: -len(".weight")] for k in keys if k.endswith(".weight"))


def write_kohya_lora(model_dir: Path, path: Path, seed: int, rank: int = 4,
                     alpha: float = 2.0, dtype: type = np.float16,
                     sdxl: bool = False) -> Path:  # fmt: skip
    """A kohya-layout LoRA (`lora_unet_<m>.lora_down.weight`, `.alpha`), fp16 as most ship;
    `sdxl`: as kohya writes SDXL's (te1/te2, the UNet's layers under SGM's names)."""
    rng = np.random.default_rng(seed)
    prefixes = SDXL_KOHYA_PREFIXES if sdxl else KOHYA_PREFIXES
    files = SDXL_WEIGHT_FILES if sdxl else WEIGHT_FILES
    tensors = {}
    for component, modules in _targets(model_dir, "text_model.", files).items():
        names = _sgm_names(model_dir / files[component]) if sdxl and component == "unet" else {}
        for module, shape in sorted(modules.items()):
            down, up = _pair(shape, rank, rng)
            name = prefixes[component] + names.get(module, module).replace(".", "_")
            tensors[f"{name}.lora_down.weight"] = down.astype(dtype)
            tensors[f"{name}.lora_up.weight"] = up.astype(dtype)
            tensors[f"{name}.alpha"] = np.array(alpha, dtype=np.float32)
    save_file(tensors, str(path))
    return path


PROMPT = dict(prompt="a photo of an astronaut riding a horse", negative_prompt="blurry",
              num_inference_steps=8)  # fmt: skip


def prompt_latents() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((1, 4, 32, 32), dtype=np.float32)


def diffusers_image(
    model_dir: Path, loras: list[LoraSource], pipeline: str = "StableDiffusionPipeline"
) -> np.ndarray:
    """The reference: diffusers' `pipeline` with the LoRAs loaded as adapters and fused at
    their scales."""
    import diffusers
    import torch

    pipe = getattr(diffusers, pipeline).from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    if loras:
        names = [f"lora{i}" for i in range(len(loras))]
        for name, lora in zip(names, loras, strict=True):
            pipe.load_lora_weights(str(lora.path), adapter_name=name)
        pipe.set_adapters(names, adapter_weights=[lora.scale for lora in loras])
        pipe.fuse_lora(adapter_names=names)
    latents = torch.from_numpy(prompt_latents())
    return pipe(**PROMPT, latents=latents, output_type="np").images


def two_loras(files: dict[str, Path]) -> tuple[list[LoraSource], list[LoraSource]]:
    """A and B for the switching tests: the diffusers-layout LoRA at 0.7, the kohya one at 1.3."""
    return (
        [LoraSource(path=files["diffusers"], scale=0.7)],
        [LoraSource(path=files["kohya"], scale=1.3)],
    )


def lora_image(pipe) -> np.ndarray:  # type: ignore[no-untyped-def]
    """`pipe`'s image of PROMPT from the prompt latents."""
    return pipe(**PROMPT, latents=prompt_latents(), output_type="np").images


def check_switches(pipe, a, b, repeat_db: float | None = None):  # type: ignore[no-untyped-def]
    """On `pipe`: A -> B -> A gives A bit for bit (or, with `repeat_db`, to that many dB: for
    engines whose kernels are not deterministic), B and A differ, A differs from the built
    image and none gives it back (the LoRAs are taken off whatever happens); A's image and
    B's."""
    from helpers import psnr

    from sdtrt.tolerances import END_TO_END_PSNR_DB

    base = lora_image(pipe)
    try:
        pipe.set_loras(a)
        first_a = lora_image(pipe)
        pipe.set_loras(b)
        only_b = lora_image(pipe)
        pipe.set_loras(a)
        second_a = lora_image(pipe)
    finally:
        pipe.set_loras([])
    if repeat_db is None:
        assert np.array_equal(first_a, second_a) and np.array_equal(base, lora_image(pipe))
    else:
        assert psnr(first_a, second_a) >= repeat_db and psnr(base, lora_image(pipe)) >= repeat_db
    assert psnr(first_a, only_b) < END_TO_END_PSNR_DB - 20
    assert psnr(base, first_a) < END_TO_END_PSNR_DB - 20
    return first_a, only_b


def check_switching(
    plain: Path,
    merged: Path,
    a: list[LoraSource],
    b: list[LoraSource],
    bar: float,
    repeat_db: float | None = None,
) -> None:
    """check_switches on the engines at `plain`, and A's image is the image of `merged`
    (built with A) to `bar` dB."""
    from helpers import psnr

    from sdtrt.runtime.pipeline import Pipeline

    with Pipeline.load(merged) as merged_pipe:
        merged_image = lora_image(merged_pipe)
    with Pipeline.load(plain) as pipe:
        first_a, _ = check_switches(pipe, a, b, repeat_db)
    assert psnr(merged_image, first_a) >= bar
