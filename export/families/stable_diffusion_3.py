"""Stable Diffusion 3 and 3.5 (Medium, Large, Turbo): the MMDiT transformer, conditioned on two
CLIP encoders (their penultimate states side by side and their pooled outputs joined) and on
T5-XXL, whose states follow CLIP's in one token sequence; a 16-channel VAE with a shift. A folder
without T5 (diffusers lets it be dropped to save memory) runs with zeros in its place."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sdtrt.engine.manifest import STABLE_DIFFUSION_3
from sdtrt.errors import ModelSourceError
from sdtrt.export.families.diffusers_folder import (
    DiffusersModel,
    check_components,
    check_index,
    load_part,
    read_model_index,
)
from sdtrt.export.lean import stored_dtype
from sdtrt.export.memory import check_load_memory, fp32_bytes_on_disk
from sdtrt.export.specs import (
    ComponentSpec,
    T5EncoderSpec,
    TransformerSpec,
    VaeDecoderSpec,
    VaeEncoderSpec,
    XLTextEncoderSpec,
)
from sdtrt.export.specs.text_encoders import T5_LENGTHS

CLIP_ENCODERS = ("text_encoder", "text_encoder_2")
T5_ENCODER = "text_encoder_3"


def _t5_config(folder: Path) -> dict[str, Any]:
    path = folder / T5_ENCODER / "config.json"
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as error:
        raise ModelSourceError(f"{path} cannot be read ({error})") from error


def _present(index: dict[str, Any], part: str) -> bool:
    return isinstance(index.get(part), list) and bool(index[part][0])


@dataclass
class StableDiffusion3Model(DiffusersModel):
    """An SD 3 / 3.5 diffusers folder, loaded into torch for export."""

    folder: Path
    name: str
    text_encoder: Any
    text_encoder_2: Any
    text_encoder_3: Any | None  # None where the folder has no T5
    transformer: Any
    vae: Any
    scheduler_class: str
    # Read from the modules at load: the build releases each module once exported.
    vae_scale_factor: int
    text_max_length: int
    joint_attention_dim: int
    text_encoders: tuple[str, ...]  # the CLIP encoders, and T5 where the folder has it
    t5_deferred: bool = False  # T5 is loaded in 16 bits when its spec is made

    family = STABLE_DIFFUSION_3
    denoiser = "transformer"
    COMPONENT_FOLDERS = {
        "text_encoder": ("text_encoder",),
        "text_encoder_2": ("text_encoder_2",),
        "text_encoder_3": ("text_encoder_3",),
        "transformer": ("transformer",),
        "vae_decoder": ("vae",),
        "vae_encoder": ("vae",),
    }
    TOKENIZER_FOLDERS = {
        "text_encoder": "tokenizer",
        "text_encoder_2": "tokenizer_2",
        "text_encoder_3": "tokenizer_3",
    }
    PIPELINES = (
        "StableDiffusion3Pipeline",
        "StableDiffusion3Img2ImgPipeline",
        "StableDiffusion3InpaintPipeline",
    )
    OPTIONAL_TEXT_ENCODERS = (T5_ENCODER,)
    T5_ENCODERS = (T5_ENCODER,)
    merges_loras = False  # SD 3 LoRAs' layer names are not mapped yet
    takes_controlnets = False  # SD3ControlNetModel is not built yet

    @classmethod
    def load(
        cls,
        folder: Path,
        name: str,
        components: tuple[str, ...] | None = None,
        sixteen_bit: bool = False,
    ) -> StableDiffusion3Model:
        """T5 is loaded only where it is built: a build without it need not hold T5-XXL's
        17.7 GiB of fp32 weights. With `sixteen_bit` (a build that stores its weights in fp16)
        it is loaded in 16 bits, and only when its turn comes, after the other networks are
        built and let go (see specs)."""
        from diffusers import AutoencoderKL, SD3Transformer2DModel
        from transformers import CLIPTextModelWithProjection, T5EncoderModel

        index = read_model_index(folder)
        parts = ("text_encoder", "text_encoder_2", "transformer", "vae")
        check_index(folder, index, (*parts, "tokenizer", "tokenizer_2", "scheduler"))
        with_t5 = _present(index, T5_ENCODER) and (components is None or T5_ENCODER in components)
        if with_t5:
            check_index(folder, index, ("tokenizer_3",))
        deferred = with_t5 and sixteen_bit
        eager_t5 = with_t5 and not deferred
        check_load_memory(folder, (*parts, *((T5_ENCODER,) if eager_t5 else ())), name)
        text_encoder = load_part(folder, CLIPTextModelWithProjection, "text_encoder")
        transformer = load_part(folder, SD3Transformer2DModel, "transformer")
        vae = load_part(folder, AutoencoderKL, "vae")
        model = cls(
            folder=folder,
            name=name,
            text_encoder=text_encoder,
            text_encoder_2=load_part(folder, CLIPTextModelWithProjection, "text_encoder_2"),
            text_encoder_3=load_part(folder, T5EncoderModel, T5_ENCODER) if eager_t5 else None,
            transformer=transformer,
            vae=vae,
            scheduler_class=str(index["scheduler"][1]),
            vae_scale_factor=int(2 ** (len(vae.config.block_out_channels) - 1)),
            text_max_length=int(text_encoder.config.max_position_embeddings),
            joint_attention_dim=int(transformer.config.joint_attention_dim),
            text_encoders=(*CLIP_ENCODERS, T5_ENCODER) if with_t5 else CLIP_ENCODERS,
            t5_deferred=deferred,
        )
        model.check_widths()
        return model

    def check_widths(self) -> None:
        """The transformer must take what the encoders make, as diffusers assumes it does."""
        clip = [int(e.config.projection_dim) for e in (self.text_encoder, self.text_encoder_2)]
        states = [int(e.config.hidden_size) for e in (self.text_encoder, self.text_encoder_2)]
        config = self.transformer.config
        widths = [sum(states), self.joint_attention_dim]
        if self.text_encoder_3 is not None:
            widths.append(int(self.text_encoder_3.config.d_model))
        elif self.t5_deferred:
            widths.append(int(_t5_config(self.folder)["d_model"]))
        if sum(clip) != int(config.pooled_projection_dim) or max(widths) != widths[1]:
            raise ModelSourceError(
                f"{self.folder}: the transformer takes pooled prompts of "
                f"{config.pooled_projection_dim} and text tokens {self.joint_attention_dim} wide, "
                f"but its text encoders make {sum(clip)} and {max(widths)}"
            )

    @property
    def size_step(self) -> int:
        return self.vae_scale_factor * int(self.transformer.config.patch_size)

    @property
    def default_components(self) -> tuple[str, ...]:
        """T5 last where it is loaded at its turn (in 16 bits), once the others are let go;
        with the other text encoders, the cheap networks first, elsewhere."""
        networks = (*self.text_encoders, "transformer", "vae_decoder", "vae_encoder")
        if not self.t5_deferred:
            return networks
        return (*(n for n in networks if n != T5_ENCODER), T5_ENCODER)

    def deferred_sizes(self) -> dict[str, int]:
        """Bytes of the modules not loaded yet that a build will load: T5 in 16 bits."""
        if not self.t5_deferred or self.text_encoder_3 is not None:
            return {}
        return {T5_ENCODER: fp32_bytes_on_disk(self.folder / T5_ENCODER) // 2}

    def _t5(self) -> Any:
        """T5, loaded now in 16 bits where the build deferred it."""
        if self.text_encoder_3 is None and self.t5_deferred:
            from transformers import T5EncoderModel

            folder = self.folder / T5_ENCODER
            check_load_memory(self.folder, (T5_ENCODER,), self.name, bytes_per_weight=2)
            self.text_encoder_3 = load_part(
                self.folder, T5EncoderModel, T5_ENCODER, stored_dtype(folder)
            )
        return self.text_encoder_3

    def conditioning_info(self) -> dict[str, Any]:
        return {
            "joint_attention_dim": self.joint_attention_dim,
            "max_sequence_length": T5_LENGTHS[-1],
            "patch_size": int(self.transformer.config.patch_size),
            "transformer_layers": int(self.transformer.config.num_layers),
            # Nothing in a Turbo folder's configs tells it from its base model: its name does.
            "few_step": "turbo" in self.name.lower(),
        }

    def text_to_image_pipeline(self, scheduler_config: dict[str, Any]) -> Any:
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline(
            transformer=self.transformer,
            scheduler=self._scheduler(scheduler_config),
            vae=self.vae,
            text_encoder=self.text_encoder,
            tokenizer=self._tokenizer("tokenizer"),
            text_encoder_2=self.text_encoder_2,
            tokenizer_2=self._tokenizer("tokenizer_2"),
            text_encoder_3=self.text_encoder_3,
            tokenizer_3=self._t5_tokenizer() if self.text_encoder_3 is not None else None,
        )

    def prompt_arguments(self, pipeline: Any, prompt: str, negative_prompt: str) -> dict[str, Any]:
        """`pipeline`'s arguments that carry `prompt` already encoded, as its own call would
        encode it: the text encoders can go before the transformer runs."""
        encoded = pipeline.encode_prompt(
            prompt, None, None, device="cpu", negative_prompt=negative_prompt
        )
        names = (
            "prompt_embeds",
            "negative_prompt_embeds",
            "pooled_prompt_embeds",
            "negative_pooled_prompt_embeds",
        )
        return dict(zip(names, encoded, strict=True))

    def _t5_tokenizer(self) -> Any:
        from transformers import T5TokenizerFast  # type: ignore[attr-defined]

        return T5TokenizerFast.from_pretrained(self.folder, subfolder="tokenizer_3")

    def specs(self, components: tuple[str, ...]) -> list[ComponentSpec]:
        f, length = self.vae_scale_factor, self.text_max_length
        makers = {
            "text_encoder": lambda: XLTextEncoderSpec("text_encoder", self.text_encoder, length),
            "text_encoder_2": lambda: XLTextEncoderSpec(
                "text_encoder_2", self.text_encoder_2, length
            ),
            "text_encoder_3": lambda: T5EncoderSpec(self._t5()),
            "transformer": lambda: TransformerSpec(self.transformer, f, length),
            "vae_decoder": lambda: VaeDecoderSpec(self.vae, f),
            "vae_encoder": lambda: VaeEncoderSpec(self.vae, f),
        }
        check_components(self.folder, components, self.default_components)
        return [makers[c]() for c in components]
