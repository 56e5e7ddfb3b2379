"""The `sdtrt` command: the happy paths, and one clear line for every bad input."""

import json
import math
import shutil

import pytest
from helpers import assert_one_line_error, sdtrt
from PIL import Image

from sdtrt.cli import parse_size
from sdtrt.errors import InputError
from sdtrt.runtime.schedulers import SCHEDULERS, resolve_scheduler_name, scheduler_names


def test_run_writes_a_png_with_parameters(tiny_engine_dir, tmp_path):
    output = tmp_path / "cat.png"
    result = sdtrt(
        "run",
        tiny_engine_dir,
        "a photo of a cat",
        "-o",
        output,
        "--negative",
        "blurry",
        "--steps",
        4,
        "--guidance",
        6,
        "--seed",
        11,
        "--height",
        48,
        "--width",
        80,
        "--scheduler",
        "EulerDiscreteScheduler",
    )
    assert result.exit_code == 0, result.stderr
    image = Image.open(output)
    assert image.size == (80, 48)
    assert image.info["parameters"] == (
        "a photo of a cat\nNegative prompt: blurry\n"
        "Steps: 4, Sampler: euler, CFG scale: 6.0, Seed: 11, Size: 80x48, Model: tiny"
    )
    assert "unet x 4" in result.stdout and "vae decoder" in result.stdout


def test_run_with_a1111_prompt_and_clip_skip(tiny_engine_dir, tmp_path):
    output = tmp_path / "castle.png"
    prompt = "a (castle:1.3) on a [hill], " * 12 + "BREAK sunset"
    result = sdtrt(
        "run", tiny_engine_dir, prompt, "-o", output, "--steps", 2, "--seed", 1,
        "--prompt-syntax", "a1111", "--clip-skip", 1,
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "truncated" not in result.stderr
    assert "Clip skip: 2" in Image.open(output).info["parameters"]  # the web UI's count


def test_run_batch_writes_numbered_files(tiny_engine_dir, tmp_path):
    result = sdtrt(
        "run", tiny_engine_dir, "a cat", "-o", tmp_path / "cat.png", "--steps", 2, "--batch", 2
    )
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cat-0.png", "cat-1.png"]


def test_empty_prompt_works_and_long_prompt_warns(tiny_engine_dir, tmp_path):
    assert sdtrt("run", tiny_engine_dir, "", "-o", tmp_path / "a.png", "--steps", 1).exit_code == 0
    result = sdtrt("run", tiny_engine_dir, "cat " * 100, "-o", tmp_path / "b.png", "--steps", 1)
    assert result.exit_code == 0
    assert "warning: prompt" in result.stderr and "truncated" in result.stderr


def test_preset_build_info(tmp_path):
    assert sdtrt("preset", "tiny", tmp_path / "model").exit_code == 0
    result = sdtrt(
        "build",
        tmp_path / "model",
        "-o",
        tmp_path / "engines",
        "--max-size",
        "96x128",
        "--max-batch",
        2,
        "--max-prompt-chunks",
        2,
    )
    assert result.exit_code == 0, result.stderr
    assert "engines written to" in result.stdout
    result = sdtrt("info", tmp_path / "engines")
    assert result.exit_code == 0
    assert "32..96 high and 32..128 wide px in steps of 2" in " ".join(result.stdout.split())
    assert "prompts of up to 2 chunks" in " ".join(result.stdout.split())
    assert "exported graphs after constant folding" in result.stdout
    manifest = json.loads((tmp_path / "engines" / "manifest.json").read_text())
    assert manifest["components"]["unet"]["io"]["profile"]["sample"]["max"] == [4, 4, 48, 64]
    states = manifest["components"]["unet"]["io"]["profile"]["encoder_hidden_states"]
    assert states["min"] == [1, 77, 32] and states["max"] == [4, 2 * 77, 32]


def _newer_format(directory):
    path = directory / "manifest.json"
    data = json.loads(path.read_text())
    data["format_version"] += 1
    path.write_text(json.dumps(data))


def _truncate(directory):
    engine = directory / "unet" / "engine.onnx"
    engine.write_bytes(engine.read_bytes()[:5000])


def _corrupt(directory):
    engine = directory / "unet" / "engine.onnx"
    engine.write_bytes(bytes(engine.stat().st_size))  # same size, all zeros


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: shutil.rmtree(d), "does not exist"),
        (lambda d: (d / "manifest.json").unlink(), "is not an sdtrt engine directory"),
        (_newer_format, "was written by a newer sdtrt"),
        (_truncate, "is damaged (5000 bytes, built as"),
        (_corrupt, "could not be loaded"),
    ],
)
def test_run_refuses_bad_engine_directories(engine_copy, tmp_path, damage, message):
    damage(engine_copy)
    output = tmp_path / "out.png"
    assert_one_line_error(sdtrt("run", engine_copy, "a cat", "-o", output), message)
    assert not output.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--height", "63"], "height must be a positive multiple of 2, got 63"),
        (["--width", "0"], "width must be a positive multiple of 2, got 0"),
        (["--height", "256"], "256x64 is outside the built range (32..128 high and 32..128 wide)"),
        (["--steps", "0"], "steps must be a whole number of at least 1, got 0"),
        (["--guidance", "nan"], "guidance must be a finite number, got nan"),
        (["--guidance", "inf"], "guidance must be a finite number, got inf"),
        (["--scheduler", "k_lms"], "unknown scheduler 'k_lms'; choose one of: ddim, ddpm, deis,"),
        (["--noise", "gpu"], "unknown noise source 'gpu'; choose one of: torch, numpy"),
        (["--batch", "9"], "9 images per call exceeds the built maximum of 4"),
        (["-o", "picture.jpg"], "the output must be a .png file"),
        (["--prompt-syntax", "comfy"], "unknown prompt syntax 'comfy'; choose one of: diffusers"),
        (["--clip-skip", "6"], "clip skip must be 0 to 5 (this text encoder's layers), got 6"),
        (
            ["--prompt-syntax", "a1111", "--negative", "a BREAK b BREAK c BREAK d"],
            "needs 4 chunks of 75 tokens, more than the 3 these engines take",
        ),
    ],
)
def test_run_refuses_bad_requests(tiny_engine_dir, tmp_path, monkeypatch, options, message):
    monkeypatch.chdir(tmp_path)
    result = sdtrt(
        "run",
        tiny_engine_dir,
        "a cat",
        *(["-o", "out.png"] if "-o" not in options else []),
        *options,
    )
    assert_one_line_error(result, message)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no-such-model"], "unknown model 'no-such-model'"),
        (["./missing/folder"], "unknown model './missing/folder'"),
        (["tiny", "--min-size", "12x"], "--min-size must look like 512 or 512x768"),
        (["tiny", "--max-size", "101"], "--max-size 101x101 must be positive multiples of 2"),
        (
            ["tiny", "--backend", "tensorflow"],
            "unknown backend 'tensorflow'; choose one of: auto, onnxruntime",
        ),
        (["tiny", "--components", "unet,vae"], "unknown component vae"),
        (["tiny", "--max-prompt-chunks", "0"], "--max-prompt-chunks must be at least 1, got 0"),
    ],
)
def test_build_refuses_bad_input(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(sdtrt("build", *args, "-o", "engines"), message)
    assert list(tmp_path.iterdir()) == []


def test_build_refuses_a_foreign_output_directory(tiny_model_dir, tmp_path):
    foreign = tmp_path / "documents"
    foreign.mkdir()
    (foreign / "thesis.txt").write_text("years of work")
    result = sdtrt("build", tiny_model_dir, "-o", foreign)
    assert_one_line_error(result, "exists and is not an sdtrt engine directory")
    assert [p.name for p in foreign.iterdir()] == ["thesis.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["documents"]


def test_preset_and_info_bad_input(tmp_path):
    assert_one_line_error(sdtrt("preset", "huge", tmp_path / "x"), "unknown preset 'huge'")
    assert_one_line_error(sdtrt("info", tmp_path / "nothing"), "does not exist")
    assert list(tmp_path.iterdir()) == []


def test_parse_size():
    assert parse_size("512", "--x") == (512, 512)
    assert parse_size("512x768", "--x") == (512, 768)
    assert parse_size(None, "--x") is None
    for bad in ("", "x", "0", "12x", "axb", "1x2x3", str(math.inf)):
        with pytest.raises(InputError):
            parse_size(bad, "--x")


# The flow-matching samplers sample SD 3 models only (tests/cli/test_cli_sd3.py).
NOISE_SCHEDULERS = [n for n in scheduler_names() if not SCHEDULERS[n].cls.flow_matching]


@pytest.mark.parametrize("scheduler", NOISE_SCHEDULERS + ["DPMSolverMultistepScheduler"])
def test_run_with_every_scheduler(tiny_engine_dir, tmp_path, scheduler):
    output = tmp_path / "out.png"
    result = sdtrt(
        "run",
        tiny_engine_dir,
        "a cat",
        "-o",
        output,
        "--steps",
        3,
        "--scheduler",
        scheduler,
        "--seed",
        1,
    )
    assert result.exit_code == 0, result.stderr
    assert f"Sampler: {resolve_scheduler_name(scheduler)}," in Image.open(output).info["parameters"]
