"""The runtime loads and generates with torch, diffusers and transformers unimportable."""

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = {"torch", "diffusers", "transformers", "onnx", "onnx_graphsurgeon"}

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked: {name}")
            return None

    sys.meta_path.insert(0, Block())
    from sdtrt.runtime import Pipeline

    with Pipeline.load(sys.argv[1]) as pipe:
        result = pipe("a photo of a cat", num_inference_steps=3, seed=0, output_type="np")
    heavy = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not heavy, heavy
    print(result.images.shape)
    """
)


def test_runtime_runs_without_torch(tiny_engine_dir):
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_engine_dir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 64, 64, 3)"
