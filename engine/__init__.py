"""Engines: the Engine interface, its backends, build ranges, and the artifact directory.

The ground floor of sdtrt: imports neither torch, `sdtrt.export` nor `sdtrt.runtime`, and loads a
backend's library only when that backend is asked for.
"""
