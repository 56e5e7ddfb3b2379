"""Benchmarks users run: `sdtrt bench` for sdtrt's own latency, and the side-by-side harness
against diffusers (torch eager) and OpenVINO."""
