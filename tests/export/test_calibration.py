"""w8a8's calibration inputs: diffusers' UNet calls, named as the exported UNet's inputs."""

import numpy as np
import pytest
import torch

from sdtrt.engine.options import BuildOptions
from sdtrt.engine.ranges import resolve_ranges
from sdtrt.errors import InputError
from sdtrt.export.calibration import (
    at_batch,
    check_calibratable,
    record_unet_calls,
    unet_feeds,
)
from sdtrt.export.families import load_family
from sdtrt.export.presets import write_preset


def test_a_calls_inputs_take_the_exported_names():
    sample, states = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    positional = unet_feeds((sample, torch.tensor(981), states), {})
    assert positional["timestep"].tolist() == [981.0, 981.0]  # a scalar timestep, per row
    assert positional["timestep"].dtype == np.float32
    assert np.array_equal(positional["encoder_hidden_states"], states.numpy())
    added = {"text_embeds": torch.randn(2, 48), "time_ids": torch.randn(2, 6)}
    keywords = unet_feeds(
        (sample,),
        {"timestep": torch.tensor([5.0, 5.0]), "encoder_hidden_states": states,
         "added_cond_kwargs": added, "timestep_cond": torch.randn(2, 16)},
    )  # fmt: skip
    assert set(keywords) == {
        "sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids", "timestep_cond"
    }  # fmt: skip
    assert np.array_equal(keywords["time_ids"], added["time_ids"].numpy())


def test_the_runs_cover_every_step_at_the_optimum_size(tiny_model_dir):
    loaded = load_family(tiny_model_dir, "tiny")
    ranges = resolve_ranges(BuildOptions(opt_size=(48, 40)), *_sizes(loaded))
    runs = record_unet_calls(
        loaded.unet,
        loaded.text_to_image_pipeline(loaded.scheduler_config()),
        ranges,
        ("a cat", "a dog"),
        steps=3,
    )
    assert len(runs) == 2 and len(runs[0]) == len(runs[1]) >= 3  # PNDM calls twice at first
    first = runs[0][0]
    factor = loaded.info().vae_scale_factor
    assert first["sample"].shape == (2, 4, 48 // factor, 40 // factor)  # one image, guided
    assert first["encoder_hidden_states"].shape[0] == 2
    timesteps = [call["timestep"][0] for call in runs[0]]
    assert timesteps == sorted(timesteps, reverse=True) and len(set(timesteps)) >= 3
    assert not np.array_equal(runs[0][1]["sample"], runs[1][1]["sample"])  # other seed, prompt


def _sizes(loaded):
    info = loaded.info()
    return info.native_size, info.vae_scale_factor


def test_models_that_cannot_make_images_from_text_are_refused(
    tiny_model_dir, tiny_inpaint_model_dir, tmp_path
):
    refiner = tmp_path / "refiner"
    write_preset("tiny-sdxl-refiner", refiner)
    assert load_family(tiny_model_dir, "tiny").makes_images_from_text
    for folder in (tiny_inpaint_model_dir, refiner):
        loaded = load_family(folder, folder.name)
        assert not loaded.makes_images_from_text
        with pytest.raises(InputError, match="w8a8 calibrates on text-to-image runs") as error:
            check_calibratable(loaded.makes_images_from_text)
        assert "\n" not in str(error.value)


def test_a_held_out_call_is_repeated_to_the_optimum_batch():
    feeds = {"sample": np.arange(4.0).reshape(2, 2), "timestep": np.array([7.0, 7.0])}
    four = at_batch(feeds, 4)
    assert four["sample"].tolist() == [[0, 1], [2, 3], [0, 1], [2, 3]]
    assert four["timestep"].tolist() == [7.0] * 4
    assert at_batch(feeds, 3)["sample"].shape == (2, 2)  # not a whole number of repeats
