"""What a TensorRT engine says about its tensors, checked against the component's spec.

Pure functions over plain values (names, modes, dtype names, shapes), so each decision is
tested without TensorRT; engine.py turns TensorRT's objects into these values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from sdtrt.engine.tensors import ComponentIO, Shape
from sdtrt.errors import ArtifactError

# TensorRT's DataType names and the numpy dtypes the runtime feeds and reads. Types without a
# numpy counterpart (FP8, FP4, INT4, ...) keep TensorRT's name, so a mismatch can say what it is.
_NUMPY_DTYPES = {
    "FLOAT": "float32",
    "HALF": "float16",
    "BF16": "bfloat16",
    "INT8": "int8",
    "UINT8": "uint8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
}

TensorInfo = tuple[str, str, str]  # (name, "input" | "output", numpy dtype name)


def numpy_dtype(trt_dtype_name: str) -> str:
    """The numpy dtype name for one of TensorRT's DataType names ("FLOAT" -> "float32")."""
    return _NUMPY_DTYPES.get(trt_dtype_name, f"TensorRT {trt_dtype_name}")


def check_engine_io(io: ComponentIO, tensors: Sequence[TensorInfo], path: Path) -> None:
    """Refuse an engine whose I/O tensors are not the spec's: each spec input and output must
    be there, in that role, with that dtype, and the engine must have nothing else."""
    expected = {t.name: ("input", t.dtype) for t in io.inputs}
    expected.update({t.name: ("output", t.dtype) for t in io.outputs})
    problems = []
    found = {name: (mode, dtype) for name, mode, dtype in tensors}
    for name, (mode, dtype) in expected.items():
        if name not in found:
            problems.append(f"it has no {mode} '{name}'")
            continue
        actual_mode, actual_dtype = found[name]
        if actual_mode != mode:
            problems.append(f"'{name}' is an {actual_mode} where the spec has an {mode}")
        elif actual_dtype != dtype:
            problems.append(f"{mode} '{name}' is {actual_dtype} where the spec has {dtype}")
    for name, (mode, _) in found.items():
        if name not in expected:
            problems.append(f"it has an unexpected {mode} '{name}'")
    if problems:
        raise ArtifactError(
            f"{path} does not match its manifest: {'; '.join(problems)}; rebuild the engines"
        )


def output_shapes(
    component: str,
    io: ComponentIO,
    input_shapes: Mapping[str, Shape],
    reported: Mapping[str, Sequence[int]],
) -> dict[str, Shape]:
    """Each output's shape as the execution context computed it for `input_shapes`, checked.

    The context knows every output shape once the input shapes are set, including dims no
    input carries (the VAE decoder's image size, the VAE encoder's latent size). An answer
    with an unknown (-1) dim, the wrong rank, a fixed dim that differs from the spec or a
    named dim that disagrees with the inputs means the engine is not the network the manifest
    describes, and would otherwise be sized wrongly and overrun its buffers.
    """
    sizes: dict[str, int] = {}
    for spec in io.inputs:
        for dim, size in zip(spec.shape, input_shapes[spec.name], strict=True):
            if isinstance(dim, str):
                sizes[dim] = int(size)
    inputs = ", ".join(f"{name} {tuple(shape)}" for name, shape in input_shapes.items())
    result: dict[str, Shape] = {}
    for spec in io.outputs:
        if spec.name not in reported:
            raise ArtifactError(f"{component}: TensorRT gives no shape for output '{spec.name}'")
        shape = tuple(int(d) for d in reported[spec.name])

        def refuse(why: str, spec_name: str = spec.name, shape: Shape = shape) -> ArtifactError:
            return ArtifactError(
                f"{component}: TensorRT computed output '{spec_name}' as {shape} for inputs "
                f"{inputs}, {why}; rebuild the engines"
            )

        if any(d < 0 for d in shape):
            raise refuse("with dims it could not work out")
        if len(shape) != len(spec.shape):
            raise refuse(f"but the spec has {len(spec.shape)} dims {spec.shape}")
        for dim, size in zip(spec.shape, shape, strict=True):
            if isinstance(dim, int):
                if size != dim:
                    raise refuse(f"but the spec fixes that dim at {dim}")
            elif sizes.setdefault(dim, size) != size:
                raise refuse(f"but '{dim}' is {sizes[dim]} elsewhere")
        result[spec.name] = shape
    return result
