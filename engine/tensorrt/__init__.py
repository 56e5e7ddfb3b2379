"""The TensorRT backend (`tensorrt`). TensorRT and cuda-bindings are imported only when it is used;
the decisions that need no GPU (`host`, `io`, `memory`, `timing_cache`) are tested without one."""
