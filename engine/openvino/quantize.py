"""int8 for OpenVINO models, by NNCF: weights only (int8), or weights and activations (w8a8).

Weight compression stores weights as int8 and computes in fp32: smaller, not faster. w8a8 puts
quantize/dequantize pairs on the inputs of convolutions and matrix products, with activation
scales measured on calibration inputs, so that the CPU runs those in int8 (VNNI / AMX where the
CPU has them); what stays unquantized computes in the compile's inference precision. NNCF's
transformer preset is used: it smooths activation outliers into the weights (SmoothQuant)
before quantizing, and keeps softmax and normalisation in floating point.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from types import ModuleType
from typing import Any

from sdtrt.engine.tensors import Feeds
from sdtrt.errors import BackendUnavailable, InputError


def _nncf(purpose: str) -> ModuleType:
    try:
        import nncf
    except ImportError as error:
        raise BackendUnavailable(f"{purpose} needs NNCF; run `pip install nncf`") from error
    return nncf


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Without the statistics tables and progress bars NNCF prints in the middle of sdtrt's own
    progress."""
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        nncf_log.setLevel(level)


def compress_weights(model: Any) -> Any:
    """`model` with int8 weights (NNCF's default: asymmetric, per output channel)."""
    nncf = _nncf("int8 weight compression")
    with _quiet():
        return nncf.compress_weights(model)


def quantize(model: Any, feeds: Feeds) -> Any:
    """`model` with int8 weights and activations, calibrated on `feeds` (inputs by name)."""
    if not feeds:
        raise InputError("w8a8 needs calibration inputs for the network; none were given")
    nncf = _nncf("w8a8 quantization")
    names = [port.get_any_name() for port in model.inputs]
    # Inputs in the model's order: NNCF feeds each item to the model as it is.
    items = [[feed[name] for name in names] for feed in feeds]
    with _quiet():
        return nncf.quantize(
            model,
            nncf.Dataset(items),
            model_type=nncf.ModelType.TRANSFORMER,
            subset_size=len(items),
        )
