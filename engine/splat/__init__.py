"""Gaussian-splat rendering and fitting.

``rasterize`` (rasterize.py) is the one rendering entry point with backends gsplat (CUDA), ours
(CPU, numba), a plain PyTorch tiled compositor (any device) and a dense reference (tests).
Import the submodules directly; this package imports nothing heavy.
"""
