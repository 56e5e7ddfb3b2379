"""The torch-free runtime: tokenizer, numpy schedulers and the pipeline over built engines."""

from sdtrt.runtime.pipeline import GenerationOutput, Pipeline, Timings

__all__ = ["GenerationOutput", "Pipeline", "Timings"]
