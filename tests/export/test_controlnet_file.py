"""A ControlNet given as one .safetensors file: diffusers' layout, or the original ControlNet
code's (`control_model.input_hint_block...`), read for the model's UNet with every weight in
its place. Building and running from such a file: the tiny ControlNet engines' fixture builds
its second ControlNet from one (tests/runtime/test_controlnet.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from sdtrt.errors import ModelSourceError
from sdtrt.export.controlnet_file import controlnet_config, convert_controlnet_file
from sdtrt.export.presets.controlnet import TINY_CONTROLNET, TINY_SDXL_CONTROLNET, write_controlnet
from sdtrt.export.presets.table import TINY, TINY_SDXL
from tests.checkpoint_files import controlnet_to_ldm
from tests.helpers import assert_one_line_error, sdtrt

WEIGHTS = "diffusion_pytorch_model.safetensors"


def _unet_config(preset) -> dict:  # type: ignore[no-untyped-def]
    return {"_class_name": "UNet2DConditionModel", **json.loads(json.dumps(preset.unet))}


def _written(tmp_path: Path, preset) -> tuple[dict, dict[str, np.ndarray]]:  # type: ignore[no-untyped-def]
    folder = tmp_path / preset.name
    write_controlnet(preset, folder)
    return json.loads((folder / "config.json").read_text()), load_file(str(folder / WEIGHTS))


def _assert_same_weights(folder: Path, weights: dict[str, np.ndarray]) -> None:
    read = load_file(str(folder / WEIGHTS))
    assert sorted(read) == sorted(weights)
    for name, value in weights.items():
        np.testing.assert_array_equal(read[name], value, err_msg=name)


def test_original_layout_is_read_for_the_models_unet(tmp_path: Path) -> None:
    # The original layout's hint encoder is SD's (to 1/8 of the pixels): diffusers converts that.
    preset = dataclasses.replace(TINY_CONTROLNET, embedding_channels=(16, 32, 96, 256))
    config, weights = _written(tmp_path, preset)
    file = tmp_path / "control_tiny_canny.safetensors"
    save_file(controlnet_to_ldm(weights, config), str(file))

    convert_controlnet_file(file, _unet_config(TINY), tmp_path / "read")

    read_config = json.loads((tmp_path / "read" / "config.json").read_text())
    assert read_config["conditioning_embedding_out_channels"] == [16, 32, 96, 256]
    assert read_config["block_out_channels"] == list(TINY.unet["block_out_channels"])
    _assert_same_weights(tmp_path / "read", weights)


def test_diffusers_layout_keeps_its_own_transformer_depths(tmp_path: Path) -> None:
    # SDXL's smaller ControlNets have fewer transformer layers than the UNet they guide.
    shallow = {**TINY_SDXL.unet, "transformer_layers_per_block": (1, 1)}
    preset = dataclasses.replace(
        TINY_SDXL_CONTROLNET, base=dataclasses.replace(TINY_SDXL, unet=shallow)
    )
    _, weights = _written(tmp_path, preset)
    file = tmp_path / "controlnet-small.safetensors"
    save_file(weights, str(file))

    config = controlnet_config(file, _unet_config(TINY_SDXL))
    assert config["transformer_layers_per_block"] == [1, 1]  # the UNet's: (1, 2)
    assert config["conditioning_embedding_out_channels"] == [16, 32]
    convert_controlnet_file(file, _unet_config(TINY_SDXL), tmp_path / "read")
    _assert_same_weights(tmp_path / "read", weights)


def test_a_file_that_is_no_controlnet_is_refused_in_one_line(tmp_path: Path) -> None:
    file = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down.lora_up.weight": np.zeros((4, 4), np.float32)}, str(file))
    with pytest.raises(ModelSourceError, match="is not a ControlNet"):
        controlnet_config(file, _unet_config(TINY))


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("canny.pth", "is not a .safetensors file"),
        ("sdxl-canny.safetensors", "cannot read sdxl-canny.safetensors as a ControlNet for"),
    ],
)
def test_cli_refuses_a_bad_controlnet_file_before_building(
    tmp_path: Path, name: str, message: str
) -> None:
    _, weights = _written(tmp_path, TINY_SDXL_CONTROLNET)  # another family's
    file = tmp_path / name
    if file.suffix == ".pth":
        file.write_bytes(b"not read")
    else:
        save_file(weights, str(file))
    output = tmp_path / "engines"

    result = sdtrt("build", "tiny", "--controlnet", file, "--output", output)

    assert_one_line_error(result, message)
    assert not output.exists()
