"""The installed `sdtrt` script in real processes: no tracebacks, and builds that survive a kill."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SDTRT = [sys.executable, "-m", "sdtrt.cli"]


def run(*args, timeout=300):
    return subprocess.run(
        [*SDTRT, *map(str, args)], capture_output=True, text=True, timeout=timeout
    )


def test_errors_are_one_line_without_traceback(tmp_path):
    done = run("run", tmp_path / "missing", "a cat", "-o", tmp_path / "out.png")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"error: engine directory {tmp_path / 'missing'} does not exist; "
        f"create it with `sdtrt build MODEL --output {tmp_path / 'missing'}`"
    ]
    assert "Traceback" not in done.stdout + done.stderr


def test_killed_build_leaves_nothing_runnable_and_resumes(tiny_model_dir, tmp_path):
    output = tmp_path / "engines"
    finished = tmp_path / ".engines.partial" / "text_encoder" / "component.json"
    process = subprocess.Popen(
        [*SDTRT, "build", str(tiny_model_dir), "-o", str(output)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while not finished.exists():
            assert process.poll() is None, "the build ended before it could be interrupted"
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    assert not output.exists()
    refused = run("run", output, "a cat", "-o", tmp_path / "out.png")
    assert refused.returncode == 1 and "does not exist" in refused.stderr

    resumed = run("build", tiny_model_dir, "-o", output)
    assert resumed.returncode == 0, resumed.stderr
    assert "text_encoder: reused" in resumed.stderr
    assert "unet: done" in resumed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engines"]
    ran = run("run", output, "a cat", "-o", tmp_path / "out.png", "--steps", 2)
    assert ran.returncode == 0, ran.stderr
    assert Path(tmp_path / "out.png").is_file()
