"""Building a TensorRT engine from a component's ONNX file.

Precision comes from the graph (an fp16 ONNX builds an fp16 engine): TensorRT 10 and 11 both
build strongly typed networks, and 11 has no FP16 builder flag. Each engine has one
optimisation profile, from its component's shape ranges (see engine/trt_host.profile_shapes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdtrt.engine.options import BuildOptions
from sdtrt.engine.tensorrt import timing_cache
from sdtrt.engine.tensorrt.host import profile_shapes
from sdtrt.engine.tensorrt.logger import trt_logger
from sdtrt.engine.tensors import ComponentIO
from sdtrt.errors import BuildError

ENGINE_NAME = "engine.plan"


def build_engine(
    onnx_path: Path,
    out_dir: Path,
    io: ComponentIO,
    options: BuildOptions,
    cache_dir: Path,
    target: dict[str, str],
) -> tuple[str, dict[str, Any]]:
    """Write `out_dir`/engine.plan; its file name and the settings loading it needs."""
    import tensorrt as trt

    logger = trt_logger()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        first = parser.get_error(0) if parser.num_errors else "unknown error"
        raise BuildError(f"TensorRT cannot parse {onnx_path}: {first}")
    config = builder.create_builder_config()
    config.builder_optimization_level = options.optimization_level
    # TF32 (on by default) rounds fp32 matmul and conv inputs to 10 bits: fp32 layers,
    # whether of an fp32 build or the fp32 parts of an fp16 one, must stay fp32.
    if hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if options.refittable:
        # REFIT, not REFIT_IDENTICAL: LoRA switching brings weights other than the built ones.
        config.set_flag(trt.BuilderFlag.REFIT)
    if options.workspace_gib is not None:
        workspace = int(options.workspace_gib * 2**30)
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    cache_path = timing_cache.cache_path(
        cache_dir, target["gpu_name"], target["compute_capability"], target["tensorrt_version"]
    )
    cached = timing_cache.attach(config, timing_cache.read(cache_path), cache_path)
    profile = builder.create_optimization_profile()
    for name, low, opt, high in profile_shapes(io):
        profile.set_shape(name, trt.Dims(list(low)), trt.Dims(list(opt)), trt.Dims(list(high)))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise BuildError(f"TensorRT could not build {onnx_path}; run with -v to see its log")
    (out_dir / ENGINE_NAME).write_bytes(memoryview(plan))
    if cached:
        timing_cache.update(cache_path, lambda current: timing_cache.merged(config, current))
    return ENGINE_NAME, {
        **target,
        "optimization_level": options.optimization_level,
        # A CUDA graph per shape set: --static keeps sizes fixed, so there are few of them.
        "cuda_graph": options.static,
    }
