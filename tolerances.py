"""Every numeric tolerance sdtrt holds itself to, in one place.

The build enforces the export tolerances; the test suite imports the rest so that a parity test
and the product agree on what "close enough" means.
"""

from sdtrt.engine.options import Precision

# An exported component may differ from its (fp32) PyTorch module by at most this fraction of the
# reference output's largest magnitude (max |engine - torch| <= tolerance * max |torch|). fp32
# on both sides, the sums still run in other orders: SD 1.5's networks land at 1e-6 to 3e-5, but
# the SDXL VAE decoder at 1024x1024 (its attention sums over 16384 positions) at 1.6e-4 on ONNX
# Runtime (2-core Intel Xeon, December 2026). A wrong graph misses by whole percent.
EXPORT_FP32_RELATIVE = 5e-4
# fp16 keeps 11 significant bits (~5e-4 relative per operation); through a network's depth the
# tiny model's fp16 graphs land near 2e-3 of scale.
EXPORT_FP16_RELATIVE = 1e-2
# bfloat16 keeps 8 significant bits, 8x coarser than fp16. OpenVINO's bf16 UNets land at 1.7e-2
# (tiny) and 2.5e-2 (SD 1.5 architecture) of scale, text encoders at 8e-3 and 6e-3, so fp16's
# 1e-2 cannot hold; 5e-2 still fails a graph that is wrong rather than rounded (those miss by
# whole units of scale).
EXPORT_BF16_RELATIVE = 5e-2
# int8 weights (NNCF's per-channel asymmetric compression) with fp32 compute: the tiny UNet lands
# at 1.4e-2, its text encoder at 2.6e-2.
EXPORT_INT8_RELATIVE = 5e-2
# int8 weights and activations (w8a8), calibrated on real denoising runs and checked on a call
# from a held-out run: the SD 1.5 architecture's UNet lands at 2.5e-2 of scale, the tiny SD
# models' at 4.4e-2 to 4.9e-2, tiny SDXL's at 0.16 (its images still 40 dB from diffusers'). The
# worst element of one call swings widely under int8; a graph that is wrong misses by whole units.
EXPORT_W8A8_RELATIVE = 0.25
# The fp16 guard keeps nodes in fp32 until every output is this close to the fp32 graph on its
# calibration inputs: inside the build's own fp16 check, which then runs on other inputs.
FP16_GUARD_RELATIVE = EXPORT_FP16_RELATIVE / 2
EXPORT_TOLERANCE = {
    Precision.FP32: EXPORT_FP32_RELATIVE,
    Precision.FP16: EXPORT_FP16_RELATIVE,
    Precision.BF16: EXPORT_BF16_RELATIVE,
    Precision.INT8: EXPORT_INT8_RELATIVE,
    Precision.W8A8: EXPORT_W8A8_RELATIVE,
}

# A numpy scheduler step may differ from its diffusers counterpart's, fed identical samples,
# model outputs and noise at every step of a run, by at most this much: absolute on unit-scale
# latents, relative to the step's largest operand above 1 (float32 spacing at 150 is already
# 1.5e-5, and a step down from sigma 4096 cancels nearly all of its input).
SCHEDULER_TOLERANCE = 1e-5

# End to end, sdtrt's image vs diffusers' image from the same initial latents. Swapping ONNX
# Runtime for torch in one network moves a stable image by ~130 dB; two different schedulers on
# the same random tiny model differ by 40-56 dB, so 60 dB separates "same computation" from
# "plausible but different".
END_TO_END_PSNR_DB = 60.0

# A bf16 or int8-weight image against diffusers' fp32 image from the same latents. On the tiny
# model OpenVINO's bf16 images land at 55-57 dB and int8-weight images at 59-61 dB (fp32: ~133);
# 30 dB is the bar a reduced-precision image must clear to count as the same picture.
REDUCED_PRECISION_PSNR_DB = 30.0

# A warm serving process (job history full, allocators settled) may grow by at most this much
# resident memory over 200 tiny-engine requests at 32 px; it measures 0.0-0.4 MiB, and 1.7 MiB
# when every job's result is kept. The bound catches leaks of ~20 KB or more per request (an
# engine's buffers, a pipeline per request), not the few KB of a 32 px result.
SERVE_RSS_GROWTH_MIB = 4.0
