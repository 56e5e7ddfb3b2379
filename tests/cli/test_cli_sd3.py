"""SD 3 from the command line as a new user runs it: preset, build, run."""

from helpers import assert_one_line_error, sdtrt
from PIL import Image


def test_preset_build_run(tmp_path):
    model, engines, image = tmp_path / "m", tmp_path / "e", tmp_path / "fox.png"
    assert sdtrt("preset", "tiny-sd3", model).exit_code == 0
    result = sdtrt("build", model, "-o", engines)
    assert result.exit_code == 0, result.stderr
    result = sdtrt("run", engines, "a fox", "--prompt-3", "a red fox in the snow", "--steps", 4,
                   "--seed", 1, "--skip-guidance-layers", "0,1", "-o", image)  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert "transformer x 4" in result.stdout
    assert Image.open(image).size == (64, 64)
    result = sdtrt("run", engines, "a fox", "--scheduler", "dpmpp_2m", "-o", tmp_path / "x.png")
    assert_one_line_error(result, "takes flow-matching schedulers: flow_euler")
    result = sdtrt("run", engines, "a fox", "--height", 66, "-o", tmp_path / "x.png")
    assert_one_line_error(result, "height must be a positive multiple of 4, got 66")
    result = sdtrt(
        "run", engines, "a fox", "--skip-guidance-layers", "7;8", "-o", tmp_path / "x.png"
    )
    assert_one_line_error(result, "takes layer numbers separated by commas, like 7,8,9")
    assert not (tmp_path / "x.png").exists()
