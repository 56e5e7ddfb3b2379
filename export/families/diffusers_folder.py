"""What every diffusers model folder has in common, whatever its family: the model index, the
torch modules loaded from sub-folders, the scheduler config, and the facts the runtime needs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from sdtrt.engine.manifest import ModelInfo
from sdtrt.errors import InputError, ModelSourceError, first_line


def read_model_index(folder: Path) -> dict[str, Any]:
    path = folder / "model_index.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelSourceError(f"{path} cannot be read ({error})") from error
    if not isinstance(data, dict):
        raise ModelSourceError(f"{path} is not a diffusers model index")
    return data


def load_part(folder: Path, loader: Any, subfolder: str, dtype: Any = None) -> Any:
    """A module of the folder in fp32, whatever its files hold: transformers 5 would otherwise
    keep fp16 or bf16 weights as they are (SD 3.5 folders ship bf16 and fp16 text encoders),
    and the export traces, and validates against, the fp32 network. A 16-bit `dtype` loads it
    in 16 bits instead, every layer alike (export/lean.py makes it the fp32 network)."""
    import torch

    dtype = dtype or torch.float32
    try:
        module = loader.from_pretrained(folder, subfolder=subfolder, dtype=dtype).eval()
    except Exception as error:  # diffusers/transformers raise many types for bad folders
        raise ModelSourceError(f"cannot load {folder / subfolder}: {first_line(error)}") from error
    # transformers keeps some layers in fp32 under fp16 (T5's `wo`), for fp16 compute; here
    # the compute is fp32 and they hold fp16 values.
    return module.to(dtype)


def check_index(folder: Path, index: dict[str, Any], needed: tuple[str, ...]) -> None:
    # A refiner's model_index.json names its absent first text encoder as [null, null].
    missing = [c for c in needed if not (isinstance(index.get(c), list) and index[c][0])]
    if missing:
        raise ModelSourceError(f"{folder} lacks {', '.join(missing)} in model_index.json")


def read_scheduler_config(folder: Path, scheduler_class: str) -> dict[str, Any]:
    """The scheduler config file as written. Keys it leaves out take each scheduler's own
    default, which is how diffusers' `from_config` treats them when schedulers are swapped."""
    path = folder / "scheduler" / "scheduler_config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelSourceError(f"{path} cannot be read ({error})") from error
    config.setdefault("_class_name", scheduler_class)
    return dict(config)


def _vae_scale_factor(vae: Any) -> int:
    return int(2 ** (len(vae.config.block_out_channels) - 1))


def _guidance_embedding_dim(denoiser: Any) -> int | None:
    dim = getattr(denoiser.config, "time_cond_proj_dim", None)
    return None if dim is None else int(dim)


def check_components(folder: Path, asked: tuple[str, ...], present: tuple[str, ...]) -> None:
    missing = [c for c in asked if c not in present]
    if missing:
        raise InputError(
            f"{folder} has no {', '.join(missing)}; its components are {', '.join(present)}"
        )


class DiffusersModel:
    """What the families share: the model facts the runtime needs, and the scheduler config.
    Subclasses are dataclasses with the fields named here, one module per family."""

    # Sub-folders whose contents decide what each network's export depends on, and each text
    # encoder's tokenizer folder.
    COMPONENT_FOLDERS: ClassVar[dict[str, tuple[str, ...]]]
    TOKENIZER_FOLDERS: ClassVar[dict[str, str]]
    # Text encoders a build may leave out (`--components`), the runtime putting zeros in their
    # place as diffusers does without them.
    OPTIONAL_TEXT_ENCODERS: ClassVar[tuple[str, ...]] = ()
    # Text encoders with T5's tokenizer (SentencePiece, padded to each call's length); the rest
    # are CLIP's.
    T5_ENCODERS: ClassVar[tuple[str, ...]] = ()
    # The diffusers pipeline classes (model_index.json's `_class_name`) of the family.
    PIPELINES: ClassVar[tuple[str, ...]]
    # Whether `sdtrt build --lora` merges LoRAs into its networks (export/lora_merge.py).
    merges_loras: ClassVar[bool] = True
    # The network that predicts the noise (a UNet; SD 3's transformer).
    denoiser: ClassVar[str] = "unet"
    # Whether `sdtrt build --controlnet` builds ControlNets for it (export/controlnet.py).
    takes_controlnets: ClassVar[bool] = True

    folder: Path
    name: str
    family: str
    vae: Any
    scheduler_class: str
    vae_scale_factor: int
    text_max_length: int

    def deferred_sizes(self) -> dict[str, int]:
        """Bytes, once loaded, of the modules a build loads only when their network's turn
        comes (none but SD 3's T5 in 16 bits)."""
        return {}

    @property
    def denoiser_module(self) -> Any:
        return getattr(self, self.denoiser)

    @property
    def size_step(self) -> int:
        """What image sides must be multiples of: the VAE's factor (SD 3: times its patches)."""
        return self.vae_scale_factor

    def info(self) -> ModelInfo:
        native = int(self.denoiser_module.config.sample_size) * self.vae_scale_factor
        return ModelInfo(
            family=self.family,
            name=self.name,
            native_size=(native, native),
            vae_scale_factor=self.vae_scale_factor,
            latent_channels=int(self.vae.config.latent_channels),
            vae_scaling_factor=float(self.vae.config.scaling_factor),
            vae_shift_factor=getattr(self.vae.config, "shift_factor", None),
            text_max_length=self.text_max_length,
            guidance_embedding_dim=_guidance_embedding_dim(self.denoiser_module),
            **self.conditioning_info(),
        )

    def conditioning_info(self) -> dict[str, Any]:
        """The family's own ModelInfo fields."""
        return {}

    def scheduler_config(self) -> dict[str, Any]:
        return read_scheduler_config(self.folder, self.scheduler_class)

    @property
    def makes_images_from_text(self) -> bool:
        """Whether diffusers' text-to-image pipeline can run this model (w8a8 calibrates on its
        runs): not an inpainting UNet, which also takes a masked image."""
        channels = int(self.denoiser_module.config.in_channels)
        return channels == int(self.vae.config.latent_channels)

    @property
    def guided(self) -> bool:
        """Whether diffusers' pipeline runs the model with classifier-free guidance by default:
        not a latent consistency model, which embeds the guidance scale instead."""
        return getattr(self.denoiser_module.config, "time_cond_proj_dim", None) is None

    def text_to_image_pipeline(self, scheduler_config: dict[str, Any]) -> Any:
        """diffusers' text-to-image pipeline over the loaded modules, with the model's own
        scheduler (`scheduler_config`, as `scheduler_config()` read it)."""
        raise NotImplementedError

    def _scheduler(self, config: dict[str, Any]) -> Any:
        import diffusers

        return getattr(diffusers, self.scheduler_class).from_config(config)

    def _tokenizer(self, subfolder: str) -> Any:
        from transformers import CLIPTokenizer

        return CLIPTokenizer.from_pretrained(self.folder, subfolder=subfolder)


def shared_parts(
    folder: Path, name: str, index: dict[str, Any], vae: Any, text_encoder: Any
) -> dict[str, Any]:
    """The fields every family loads alike; `text_encoder` sets the prompt length."""
    from diffusers import UNet2DConditionModel

    return {
        "folder": folder,
        "name": name,
        "unet": load_part(folder, UNet2DConditionModel, "unet"),
        "vae": vae,
        "scheduler_class": str(index["scheduler"][1]),
        "vae_scale_factor": _vae_scale_factor(vae),
        "text_max_length": int(text_encoder.config.max_position_embeddings),
    }
