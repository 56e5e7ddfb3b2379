"""Weights outside the engines: a graph's initializers read and replaced, safetensors files read
with numpy, LoRA files turned into weight deltas, and built engines re-weighted with LoRAs."""
