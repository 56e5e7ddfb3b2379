"""OpenVINO backends: on the CPU (`openvino`), an Intel GPU (`openvino-gpu`) and an Intel NPU
(`openvino-npu`); int8 weights and w8a8 through NNCF (`quantize`)."""
