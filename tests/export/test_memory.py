"""The memory check before each network is built, on the real architectures' sizes (modules on
torch's meta device: shapes without memory)."""

from types import SimpleNamespace

import pytest
import torch

from sdtrt.errors import BuildError
from sdtrt.export.memory import GIB, build_memory_needed, check_build_memory, release_modules
from sdtrt.export.presets import SD15, SDXL

SD_COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")
SDXL_COMPONENTS = ("text_encoder", "text_encoder_2", *SD_COMPONENTS[1:])


def _family(preset):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        vocab = {"vocab_size": 49408}
        second = None
        if preset.text_encoder_2 is not None:
            config = CLIPTextConfig(**preset.text_encoder_2, **vocab)
            second = CLIPTextModelWithProjection(config)
        return SimpleNamespace(
            name=preset.name,
            text_encoder=CLIPTextModel(CLIPTextConfig(**preset.text_encoder, **vocab)),
            text_encoder_2=second,
            unet=UNet2DConditionModel(**preset.unet),
            vae=AutoencoderKL(**preset.vae),
        )


def test_sdxl_unet_is_refused_on_24_gib_with_the_memory_it_needs():
    needs = build_memory_needed(_family(SDXL), SDXL_COMPONENTS)
    unet = needs["unet"]
    assert 9.5 * GIB < unet.weights < 9.7 * GIB  # 2.57 B parameters in fp32
    with pytest.raises(BuildError) as caught:
        check_build_memory(unet, "sdxl", total=24 * GIB)
    message = str(caught.value)
    assert message.startswith(f"building the unet of sdxl needs about {unet.peak / GIB:.0f} GiB")
    assert "9.6 GiB of fp32 weights, held about 4 times over" in message
    assert "this machine has 24 GiB" in message
    check_build_memory(unet, "sdxl", total=unet.peak + 1)
    # The text encoders fit, the UNet loaded beside them (and released before the UNet).
    for name in ("text_encoder", "text_encoder_2", "vae_decoder"):
        check_build_memory(needs[name], "sdxl", total=int(23.4 * GIB))
    assert unet.peak > 40 * GIB


@pytest.mark.parametrize("guarded", [False, True])
def test_sd15_fits_24_gib(guarded):
    """As measured: 13.4 GiB at the peak in fp32, 22.5 GiB for a guarded fp16 build."""
    needs = build_memory_needed(_family(SD15), SD_COMPONENTS, guarded)
    for need in needs.values():
        check_build_memory(need, "sd15", total=int(23.4 * GIB))
    assert needs["unet"].peak > (22.5 if guarded else 13.4) * GIB


def test_modules_no_network_needs_any_more_are_released():
    family = _family(SDXL)
    release_modules(family, ("unet", "vae_decoder"))
    assert family.text_encoder is None and family.text_encoder_2 is None
    assert family.unet is not None and family.vae is not None
    alone = build_memory_needed(family, ("unet", "vae_decoder"))["unet"]
    assert alone.peak == build_memory_needed(_family(SDXL), SDXL_COMPONENTS)["unet"].peak
