"""The fp32 islands of guarded fp16 engines, as `sdtrt info` shows them."""

from __future__ import annotations

from sdtrt.engine.manifest import Manifest


def island_lines(manifest: Manifest) -> list[str]:
    """A heading and one line per node kept in fp32 by the fp16 guard; [] when there are none.
    Lines, not a table: node names are long paths that a table would wrap beyond reading."""
    lines = []
    for name, record in manifest.components.items():
        if record.fp32_islands:
            lines.append(f"fp32 islands in {name} ({len(record.fp32_islands)} nodes, fp16 guard):")
            lines.extend(f"  {i.node} ({i.op}): {i.reason}" for i in record.fp32_islands)
    return lines
