"""A bf16 build's fp16-stored weights kept in 16 bits by the compiled model.

The export stores a bf16 build's weights in fp16, each read through a Cast to fp32 (see
export/onnx_weights.py). OpenVINO's ONNX reader gives those casts no mark, so the CPU plugin
folds them as it compiles: the compiled model then holds every weight in fp32 (the SD 3.5 Medium
transformer's blob 9.9 GB beside its 5.0 GB export) and its first bf16 call converts them into
one more copy. OpenVINO's own IR marks a Convert of an fp16 weight as decompression
(`compress_to_fp16`), which the plugin keeps: the weights stay fp16 in the compiled model and
are converted as its kernels read them. So the graph goes through IR with those marks added.

Measured on SD 1.5's UNet (bf16, 512x512, batch 2; 2-core Intel Xeon with AMX, OpenVINO 2026.4):
the same output bit for bit, the same call time within noise (2164 ms against 2195 ms, best of
8), a 1.6 GiB blob instead of 3.4, and the process running it 3.7 GiB at its peak instead of 5.3.
"""

from __future__ import annotations

import tempfile
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sdtrt.engine.openvino.engine import ov, shared_core

DECOMPRESSION = "decompression"  # the runtime attribute OpenVINO's IR marks them with


@contextmanager
def read_keeping_fp16(onnx_path: Path, scratch: Path) -> Iterator[Any]:
    """The graph at `onnx_path` read with its casts of fp16 weights marked as decompression.
    The IR it goes through lies in a folder under `scratch` until the context exits: a model
    compiled from it may read its weights from there until then."""
    with tempfile.TemporaryDirectory(dir=scratch, prefix=".ir-") as folder:
        xml = Path(folder) / "model.xml"
        model = shared_core().read_model(str(onnx_path))
        ov().save_model(model, str(xml), compress_to_fp16=False)
        del model  # its weights are mapped from the export; the IR's are read from now on
        mark_decompression(xml)
        yield shared_core().read_model(str(xml))


def mark_decompression(xml: Path) -> int:
    """Mark, in the IR at `xml`, every Convert to f32 that reads an fp16 constant; how many."""
    tree = ElementTree.parse(xml)
    layers = {layer.get("id"): layer for layer in tree.iter("layer")}
    source = {
        (edge.get("to-layer"), edge.get("to-port")): edge.get("from-layer")
        for edge in tree.iter("edge")
    }
    marked = 0
    for layer in layers.values():
        if layer.get("type") != "Convert" or not _reads_fp16_constant(layer, source, layers):
            continue
        rt_info = layer.find("rt_info")
        if rt_info is None:
            rt_info = ElementTree.Element("rt_info")
            layer.insert(1, rt_info)  # after <data>, where OpenVINO writes it
        if any(a.get("name") == DECOMPRESSION for a in rt_info.iter("attribute")):
            continue
        ElementTree.SubElement(rt_info, "attribute", name=DECOMPRESSION, version="0")
        marked += 1
    if marked:
        tree.write(xml, encoding="utf-8", xml_declaration=True)
    return marked


def _reads_fp16_constant(
    layer: ElementTree.Element,
    source: dict[tuple[str | None, str | None], str | None],
    layers: dict[str | None, ElementTree.Element],
) -> bool:
    data = layer.find("data")
    port = layer.find("input/port")
    if data is None or port is None or data.get("destination_type") != "f32":
        return False
    producer = layers.get(source.get((layer.get("id"), port.get("id"))))
    return (
        port.get("precision") == "FP16" and producer is not None and producer.get("type") == "Const"
    )
