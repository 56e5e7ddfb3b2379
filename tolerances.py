"""Every numeric tolerance sdtrt holds itself to, in one place.

The build enforces the export tolerances; the test suite imports the rest so that a parity test
and the product agree on what "close enough" means.
"""

from sdtrt.engine.options import Precision

# An exported component may differ from its (fp32) PyTorch module by at most this fraction of the
# reference output's largest magnitude (max |engine - torch| <= tolerance * max |torch|).
EXPORT_FP32_RELATIVE = 1e-4
# fp16 keeps 11 significant bits (~5e-4 relative per operation); through a network's depth the
# tiny model's fp16 graphs land near 2e-3 of scale.
EXPORT_FP16_RELATIVE = 1e-2
EXPORT_TOLERANCE = {Precision.FP32: EXPORT_FP32_RELATIVE, Precision.FP16: EXPORT_FP16_RELATIVE}

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
