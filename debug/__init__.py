"""Tools for when an image looks wrong: each network of an engine directory run tensor by tensor
beside its fp32 reference. They need onnx and Polygraphy (the export extra), which the runtime
does without."""
