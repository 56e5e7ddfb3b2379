"""sdtrt: Stable Diffusion as an optimized inference engine."""

__version__ = "0.1.0"
