"""Which precision each network of a build computes in, given the precision asked for.

The whole VAE stays fp32 by default under fp16 and int8 weights: Stable Diffusion VAEs overflow
fp16 in their last blocks, and the VAE encoder with it (the SDXL VAE's encoder overflows too,
which is why diffusers upcasts the VAE before encoding an image). Under bf16 and w8a8 it follows
the build's float precision by default (BuildOptions.reduced_vae): bfloat16 has fp32's range.
How a graph becomes fp16: export/fp16/.
"""

from __future__ import annotations

from sdtrt.engine.options import Precision

VAE_COMPONENTS = ("vae_decoder", "vae_encoder")
# w8a8 quantizes the denoiser (a UNet, SD 3's transformer), calibrated on its inputs in real
# runs, where nearly all of an image's compute is; the text encoders and VAE compute in the
# build's float precision.
W8A8_COMPONENTS = ("unet", "transformer")


def stores_fp16_weights(precision: Precision) -> bool:
    """Whether a network built in `precision` has its weights exported in fp16 (and cast to
    fp32 in the graph): one computed in bfloat16 loses nothing to fp16's 10-bit mantissa, and
    its backend then reads and compiles half the bytes (an SDXL UNet's 4.8 GiB, not 9.6)."""
    return precision is Precision.BF16


def component_precision(
    component: str,
    asked: Precision,
    reduced_vae: bool = False,
    float_precision: Precision = Precision.FP32,
) -> Precision:
    """The precision `component` is built in when the build asks for `asked`; `reduced_vae` lets
    the VAE follow any reduced precision (fp16, bf16, int8 weights); `float_precision` is what
    w8a8 builds compute their other networks in (bf16 where the CPU has it)."""
    if asked is Precision.W8A8 and component not in W8A8_COMPONENTS:
        asked = float_precision
    if asked is not Precision.FP32 and component in VAE_COMPONENTS and not reduced_vae:
        return Precision.FP32
    return asked
