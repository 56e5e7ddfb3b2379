"""`--lora` on `sdtrt build` and `sdtrt run`: the happy path and one line for each mistake."""

from __future__ import annotations

import numpy as np
from helpers import assert_one_line_error, sdtrt
from PIL import Image


def test_run_with_a_lora_writes_it_into_the_png(tiny_engine_dir, lora_files, tmp_path):
    common = ("run", tiny_engine_dir, "a cat", "--steps", 3, "--seed", 1)
    plain = sdtrt(*common, "-o", tmp_path / "plain.png")
    with_lora = sdtrt(*common, "-o", tmp_path / "lora.png", "--lora", f"{lora_files['kohya']}:0.9")
    assert plain.exit_code == 0 and with_lora.exit_code == 0, with_lora.stderr
    image = Image.open(tmp_path / "lora.png")
    assert "LoRA: b.safetensors:0.9" in image.info["parameters"]
    assert not np.array_equal(np.asarray(image), np.asarray(Image.open(tmp_path / "plain.png")))


def test_bad_lora_arguments_are_one_line(tiny_engine_dir, tiny_model_dir, tmp_path):
    missing = tmp_path / "missing.safetensors"
    result = sdtrt("run", tiny_engine_dir, "a cat", "--lora", missing)
    assert_one_line_error(result, "does not exist")
    result = sdtrt("build", tiny_model_dir, "-o", tmp_path / "out", "--lora", f"{missing}:0.5")
    assert_one_line_error(result, "does not exist")
    assert not (tmp_path / "out").exists()
    (tmp_path / "x.safetensors").write_bytes(b"\x00" * 16)
    result = sdtrt("run", tiny_engine_dir, "a cat", "--lora", tmp_path / "x.safetensors")
    assert_one_line_error(result, "not a .safetensors file")


def test_info_names_the_merged_loras(tiny_model_dir, lora_files, tmp_path):
    result = sdtrt("build", tiny_model_dir, "-o", tmp_path / "e", "--backend", "onnxruntime",
                   "--components", "text_encoder,unet,vae_decoder",
                   "--lora", f"{lora_files['kohya']}:0.5")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    shown = sdtrt("info", tmp_path / "e")
    assert "LoRAs      b.safetensors:0.5 (merged at build)" in shown.stdout


def test_lora_tags_in_a1111_prompts_load_from_the_lora_dir(tiny_engine_dir, lora_files, tmp_path):
    common = ("run", tiny_engine_dir, "--steps", 3, "--seed", 1, "--prompt-syntax", "a1111")
    folder = lora_files["kohya"].parent  # a.safetensors and b.safetensors
    tagged = sdtrt(*common[:2], "a cat <lora:b:0.9>", *common[2:], "--lora-dir", folder,
                   "-o", tmp_path / "tagged.png")  # fmt: skip
    named = sdtrt(*common[:2], "a cat", *common[2:], "--lora", f"{lora_files['kohya']}:0.9",
                  "-o", tmp_path / "named.png")  # fmt: skip
    assert tagged.exit_code == 0 and named.exit_code == 0, tagged.stderr
    same = [np.asarray(Image.open(tmp_path / name)) for name in ("tagged.png", "named.png")]
    assert np.array_equal(*same)
    unknown = sdtrt(*common[:2], "a cat <lora:c>", *common[2:], "--lora-dir", folder)
    assert_one_line_error(unknown, "unknown LoRA 'c'; --lora-dir has: a, b")
    plain = sdtrt("run", tiny_engine_dir, "a cat", "--lora-dir", folder)
    assert_one_line_error(plain, "--lora-dir names LoRAs for <lora:NAME:WEIGHT> tags")
