"""Every tensor of a graph on ONNX Runtime's CPU provider (the fp16 guard, `sdtrt debug
compare`), graphs over protobuf's 2 GB limit included."""

import numpy as np
import onnx

from sdtrt.engine import layers
from sdtrt.engine.manifest import read_manifest


def test_graphs_too_big_to_serialise_run_from_a_file(tiny_engine_dir, monkeypatch):
    """SD 1.5's fp32 UNet (3.4 GB) cannot be handed to ONNX Runtime as bytes; shown here by
    lowering the limit so that the tiny UNet takes the same path."""
    record = read_manifest(tiny_engine_dir).components["unet"]
    model = onnx.load(str(tiny_engine_dir / record.onnx))
    rng = np.random.default_rng(0)
    feed = {
        "sample": rng.standard_normal((1, 4, 32, 32), dtype=np.float32),
        "timestep": np.array([500.0], np.float32),
        "encoder_hidden_states": rng.standard_normal((1, 77, 32), dtype=np.float32),
    }
    [inline] = layers.all_tensors(model, [feed])
    monkeypatch.setattr(layers, "INLINE_LIMIT", 0)
    [from_file] = layers.all_tensors(model, [feed])
    assert len(inline) > 100 and inline.keys() == from_file.keys()
    for name, value in inline.items():
        np.testing.assert_array_equal(from_file[name], value, err_msg=name)
