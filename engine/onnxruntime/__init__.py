"""ONNX Runtime backends: on the CPU (`onnxruntime`) and on an NVIDIA GPU through onnxruntime-gpu's
CUDA provider (`onnxruntime-cuda`); `library` is what both, and the tools that run graphs on ONNX
Runtime, share."""
