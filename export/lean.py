"""Networks exported without their fp32 weights ever in memory (T5-XXL: 17.7 GiB in fp32).

Where a build stores a network's weights in fp16 anyway (bf16 engines; export/precision.py), the
module can be loaded in the 16 bits its files hold. Its fp32 network is still what the export
traces and what the engine is checked against:
- torch's reference outputs run each repeated block (the children of every ModuleList) in fp32
  while it runs, and back to 16 bits after: exact, since 16-bit values convert to fp32 and back
  unchanged, and the outputs are those of the fp32 network over the same weights;
- the trace runs on fp32 stand-ins of the weights that take no memory (one number broadcast to
  each weight's shape): with `export_params=False` the trace records operations, not values, and
  the real weights are written into the graph from the 16-bit tensors, one at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

SIXTEEN_BITS = (torch.float16, torch.bfloat16)


def stored_dtype(folder: Path) -> torch.dtype:
    """The 16-bit type to load the module in `folder` in: the one its safetensors files hold,
    fp16 where they hold fp32 (the build stores fp16 weights)."""
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as weights:
            for key in weights.keys():  # noqa: SIM118 (safe_open is not a mapping)
                dtype = weights.get_slice(key).get_dtype()
                if dtype == "BF16":
                    return torch.bfloat16
                if dtype == "F16":
                    return torch.float16
    return torch.float16


def is_sixteen_bit(module: torch.nn.Module) -> bool:
    return any(p.dtype in SIXTEEN_BITS for p in module.parameters())


@contextmanager
def blocks_in_fp32(module: torch.nn.Module) -> Iterator[None]:
    """Run `module`, loaded in 16 bits, as its fp32 network: each repeated block converted to
    fp32 as it starts and back as it ends, the rest (embeddings, final norms) in fp32 throughout.
    Nothing happens to an fp32 module."""
    if not is_sixteen_bit(module):
        yield
        return
    blocks = _outermost_blocks(module)
    in_blocks = {id(p) for b in blocks for p in b.parameters()}
    dtype = next(p.dtype for p in module.parameters() if p.dtype in SIXTEEN_BITS)
    outside = [p for p in module.parameters() if id(p) not in in_blocks and p.dtype in SIXTEEN_BITS]
    for parameter in outside:
        parameter.data = parameter.data.float()

    def to_fp32(block: torch.nn.Module, _: object) -> None:  # a hook's result would be its input
        block.float()

    def back(block: torch.nn.Module, _: object, __: object) -> None:  # or its output
        block.to(dtype)

    handles = []
    for block in blocks:
        handles.append(block.register_forward_pre_hook(to_fp32))
        handles.append(block.register_forward_hook(back))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for parameter in outside:
            parameter.data = parameter.data.to(dtype)


def _outermost_blocks(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The children of the module's ModuleLists, those inside another such child aside."""
    blocks: list[torch.nn.Module] = []
    prefixes: list[str] = []
    for name, child in module.named_modules():  # outer modules come first
        if isinstance(child, torch.nn.ModuleList) and not name.startswith(tuple(prefixes)):
            blocks.extend(child)
            prefixes.extend(f"{name}.{index}." for index in range(len(child)))
    return blocks


@contextmanager
def fp32_stand_ins(module: torch.nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Trace `module` on fp32 weights that take no memory; yields its real tensors by state-dict
    name (16-bit ones among them) for the graph's initializers. Nothing changes for an fp32
    module (the tensors yielded are its own)."""
    state = {name: t.detach() for name, t in module.state_dict(keep_vars=True).items()}
    if not is_sixteen_bit(module):
        yield state
        return
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Parameter]] = []
    stand_ins: dict[int, torch.nn.Parameter] = {}  # tied weights keep one stand-in
    for owner in module.modules():
        for name, parameter in list(owner._parameters.items()):
            if parameter is None or parameter.dtype not in SIXTEEN_BITS:
                continue
            if id(parameter) not in stand_ins:
                # Each its own value: the exporter merges weights of equal values into one.
                value = torch.tensor((len(stand_ins) + 1) * 2.0**-20).expand(parameter.shape)
                stand_ins[id(parameter)] = torch.nn.Parameter(value, requires_grad=False)
            owner._parameters[name] = stand_ins[id(parameter)]
            swapped.append((owner, name, parameter))
    try:
        yield state
    finally:
        for owner, name, parameter in swapped:
            owner._parameters[name] = parameter
