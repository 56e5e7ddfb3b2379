"""The SD 3 family's export side: T5's tokenizer written for the torch-free runtime and held to
transformers' id for id, the networks it exports, and what a build refuses up front."""

import json
import shutil

import pytest
from prompt_corpus import corpus
from transformers import T5TokenizerFast

from sdtrt.errors import BuildError, ModelSourceError
from sdtrt.export.families import load_family
from sdtrt.export.memory import build_memory_needed, check_load_memory, fp32_bytes_on_disk
from sdtrt.export.tokenizer_export import PROBE_PROMPTS, export_t5_tokenizer
from sdtrt.runtime.t5 import T5PromptTokenizer


@pytest.fixture(scope="module")
def tiny_sd3(preset_build):
    folder, _ = preset_build("tiny-sd3")
    return folder


@pytest.mark.parametrize("length", [1, 12, 77, 256, 512])
def test_t5_ids_match_transformers(tiny_sd3, tmp_path, length):
    export_t5_tokenizer(tiny_sd3 / "tokenizer_3", tmp_path / "tokenizer.json")
    ours = T5PromptTokenizer(tmp_path / "tokenizer.json")
    reference = T5TokenizerFast.from_pretrained(tiny_sd3 / "tokenizer_3")
    prompts = [*PROBE_PROMPTS, *corpus()]
    expected = reference(prompts, padding="max_length", max_length=length, truncation=True)
    assert ours(prompts, length).tolist() == expected.input_ids


def test_the_family_and_its_networks(tiny_sd3):
    model = load_family(tiny_sd3, "tiny-sd3")
    assert model.text_encoders == ("text_encoder", "text_encoder_2", "text_encoder_3")
    assert model.size_step == 4  # the VAE's factor 2, times patches of 2
    info = model.info()
    assert (info.family, info.latent_channels, info.native_size) == (
        "stable-diffusion-3",
        16,
        (64, 64),
    )
    assert (info.vae_shift_factor, info.joint_attention_dim, info.patch_size) == (0.0609, 96, 2)
    needs = build_memory_needed(model, model.default_components)
    assert set(needs) == set(model.default_components)
    assert needs["transformer"].weights > 0 and needs["text_encoder_3"].weights > 0


def test_a_folder_without_t5_builds_without_it(tiny_sd3, tmp_path):
    folder = tmp_path / "no-t5"
    shutil.copytree(tiny_sd3, folder)
    shutil.rmtree(folder / "text_encoder_3")
    shutil.rmtree(folder / "tokenizer_3")
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder_3"] = index["tokenizer_3"] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    model = load_family(folder, "no-t5")
    assert model.default_components == (
        "text_encoder", "text_encoder_2", "transformer", "vae_decoder", "vae_encoder"
    )  # fmt: skip
    index["tokenizer_3"] = ["transformers", "T5TokenizerFast"]
    index["text_encoder_3"] = ["transformers", "T5EncoderModel"]
    index.pop("tokenizer_3")
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelSourceError, match="lacks tokenizer_3 in model_index.json"):
        load_family(folder, "no-t5")


def test_t5_is_loaded_only_where_it_is_built(tiny_sd3):
    without = load_family(tiny_sd3, "tiny-sd3", ("text_encoder", "transformer"))
    assert without.text_encoder_3 is None
    assert "text_encoder_3" not in without.default_components


def test_networks_that_cannot_fit_are_refused_before_loading(tiny_sd3):
    needed = fp32_bytes_on_disk(tiny_sd3 / "text_encoder_3")
    assert needed == 4 * sum(
        p.numel() for p in load_family(tiny_sd3, "x").text_encoder_3.parameters()
    )
    with pytest.raises(BuildError, match=r"loading tiny-sd3's networks in fp32 needs about 2 GiB"):
        check_load_memory(tiny_sd3, ("transformer", "text_encoder_3"), "tiny-sd3", total=2**30)
