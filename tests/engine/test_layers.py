"""Every tensor of a graph on ONNX Runtime's CPU provider (the fp16 guard, `sdtrt debug
compare`), without a second copy of the graph's weights."""

import numpy as np
import onnx
import onnxruntime as ort

from sdtrt.engine import layers
from sdtrt.engine.manifest import read_manifest


def test_weights_go_beside_the_graph_and_every_tensor_comes_back(tiny_engine_dir):
    """SD 1.5's fp32 UNet (3.4 GB) can neither be serialised whole nor copied twice in 24 GB:
    the graph handed to ONNX Runtime holds no weights, and the outputs are a plain session's."""
    record = read_manifest(tiny_engine_dir).components["unet"]
    path = tiny_engine_dir / record.onnx
    model = onnx.load(str(path))
    light, weights = layers.weights_as_inputs(model)
    names = {t.name for t in weights}
    assert names and names <= {i.name for i in light.graph.input}
    assert all(t.name not in names for t in light.graph.initializer)
    assert light.ByteSize() < model.ByteSize() - sum(len(t.raw_data) for t in weights) + 4096
    rng = np.random.default_rng(0)
    feeds = [
        {
            "sample": rng.standard_normal((1, 4, 32, 32), dtype=np.float32),
            "timestep": np.array([t], np.float32),
            "encoder_hidden_states": rng.standard_normal((1, 77, 32), dtype=np.float32),
        }
        for t in (900.0, 20.0)
    ]
    runs = list(layers.each_tensors(model, feeds))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for feed, run in zip(feeds, runs, strict=True):
        assert len(run) > 100
        expected = session.run(["noise_pred"], feed)[0]
        np.testing.assert_allclose(run["noise_pred"], expected, rtol=0, atol=1e-5)
